"""作业的收尾：记下结果 → 投递一轮回调 → 记下这一轮投递。

三步总在一起、按这个顺序：结果记下（进入 delivering）之后才投递，投递的结果记下之后租约才放开。
默认在入口副本里做（三次账本调用加一次回调调用）；SQLite 账本时入口在闲着时把整个收尾交给 Ledger
副本（deployments/handles/ledger_client.py 的 LedgerSettlement）：账本本来就在那里，入口每个作业
少两次句柄调用，回调照样经 CallbackSender 部署发出。负载下入口的账本调用本来就在合批（结果、投递
记录搭别的作业的批，回调按接收方合批），就地收尾更省、也不给单个的 Ledger 副本加活，所以照旧就地做。
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from serve_app.ledger.records import JobRecord, StateChange
from serve_app.ledger.store import JobStore
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

# 投递一轮回调（不抛异常：未送达在 DeliveryOutcome 里），见 pipeline.deliver_round
Deliver = Callable[[ReportJob, CallbackPayload], Awaitable[DeliveryOutcome]]


class Settled(NamedTuple):
    """收尾的结果。"""

    final: CallbackPayload
    """记下的结果（已登记取消时是 cancelled，不一定是交来的那份）。"""
    after: JobRecord | None
    """记下这一轮投递之后的作业；投递期间租约已归别的副本时为 None。"""


class Settler(Protocol):
    """收尾的执行者：入口本地（Settlement）或 Ledger 副本（LedgerSettlement）。"""

    def worthwhile(self) -> bool:
        """此刻把收尾交给它是否划算；不划算时调用方就地收尾。"""
        ...

    async def finish_and_deliver(
        self,
        job: ReportJob,
        owner: str,
        payload: CallbackPayload,
        passed: tuple[StateChange, ...],
    ) -> Settled | None:
        """记下结果、投递、记投递；记结果时租约已不归 owner 返回 None（什么都没投）。

        Ledger 副本不认这个端点（滚动升级窗口）时抛 LedgerOutdated：什么都没做，调用方退回本地。"""
        ...


class Settlement:
    """就地收尾：对给定的账本与投递函数依次做三步（入口副本与 Ledger 副本共用）。"""

    def __init__(self, store: JobStore, deliver: Deliver) -> None:
        self._store = store
        self._deliver = deliver

    @staticmethod
    def worthwhile() -> bool:
        """就地收尾总可以。"""
        return True

    async def finish_and_deliver(
        self,
        job: ReportJob,
        owner: str,
        payload: CallbackPayload,
        passed: tuple[StateChange, ...],
    ) -> Settled | None:
        """见 Settler.finish_and_deliver。"""
        final = await self._store.finish(job.trace_id, owner, payload, passed)
        if final is None:
            return None
        return Settled(final, await self.deliver(job, owner, final))

    async def deliver(
        self, job: ReportJob, owner: str, payload: CallbackPayload
    ) -> JobRecord | None:
        """投递已记下的结果一轮并记下（重投、接手没投完的回调也走这里）。"""
        outcome = await self._deliver(job, payload)
        return await self._store.record_delivery(job.trace_id, owner, outcome)
