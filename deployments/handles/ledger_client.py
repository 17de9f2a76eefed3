"""经 DeploymentHandle 调用 Ledger 部署的 JobStore 实现：每次调用有超时，瞬时错误重试。

每个账本操作都经 CallBatcher 合并：同一副本里并发的调用（作业路径上的受理、推进、结果、投递，
以及续租、扫描）共用一次句柄调用 Ledger.apply，账本把整批组提交成一个事务。转发是通用的：
store.OPERATIONS 里的操作都经 __getattr__ 发出，协议加操作时这里不用改。

LedgerSettlement：入口闲着时作业的收尾（记结果、投递、记投递）整个交给 Ledger 副本，一次句柄调用
Ledger.settle_many（按接收方合批，像回调一样）。
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ray.serve.handle import DeploymentHandle

from deployments.handles.ray_errors import TRANSIENT_HANDLE_ERRORS, handle_retrying
from deployments.handles.request_context import use_trace_id
from deployments.handles.stages import ReceiverBatchers
from serve_app.core.errors import LedgerOutdated, LedgerUnavailable
from serve_app.core.metrics import ReportMetrics
from serve_app.core.settings import CallbackPolicy, JobPolicy
from serve_app.ledger.call_batcher import Call, CallBatcher, Outcome
from serve_app.ledger.records import StateChange
from serve_app.ledger.store import OPERATIONS, JobStore
from serve_app.models.reports import CallbackPayload, ReportJob
from serve_app.services.settlement import Settled

# 重试用尽后仍是这些异常：账本不可用
_UNAVAILABLE: tuple[type[Exception], ...] = (*TRANSIENT_HANDLE_ERRORS, TimeoutError)


class LedgerClient:
    """JobStore 的句柄实现（用 ledger_client() 取得 JobStore 类型）。"""

    def __init__(self, handle: DeploymentHandle[Any], policy: JobPolicy) -> None:
        self._handle = handle
        self.timeout_s = policy.ledger_call_timeout_s
        self.batcher = CallBatcher(self._apply)

    def __getattr__(self, op: str) -> Callable[..., Awaitable[Any]]:
        if op not in OPERATIONS:
            raise AttributeError(op)

        async def forward(*args: Any) -> Any:
            return await self.batcher.call(op, *args)

        # 记进实例属性：之后的访问直接命中，不再经 __getattr__ 每次新建闭包（作业路径上的热点）
        self.__dict__[op] = forward
        return forward

    async def call(
        self,
        method: str,
        *args: Any,
        timeout_s: float | None = None,
        resend_on_timeout: bool = True,
    ) -> Any:
        """调用 Ledger 部署的一个端点（超时、重试；用尽即 LedgerUnavailable）。

        timeout_s 默认账本调用的超时；resend_on_timeout=False：超时不重发（端点也许还在做）。"""
        endpoint = getattr(self._handle, method)
        timeout = self.timeout_s if timeout_s is None else timeout_s

        async def attempt() -> Any:
            async with asyncio.timeout(timeout):
                return await endpoint.remote(*args)

        also = _UNAVAILABLE if resend_on_timeout else ()
        retrying = handle_retrying(also=also, initial_backoff_s=0.2, max_backoff_s=5)
        try:
            return await retrying(attempt)
        except _UNAVAILABLE as exc:
            raise LedgerUnavailable(f"作业账本暂不可用（{method}）") from exc

    async def _apply(self, calls: list[Call]) -> list[Outcome]:
        """一批调用 → 一次 Ledger.apply（整批重试：每个操作按 trace_id 与租约判定，可安全重放）。"""
        try:
            return cast(list[Outcome], await self.call("apply", calls))
        except LedgerUnavailable as exc:
            names = sorted({method for method, _ in calls})
            raise LedgerUnavailable(f"作业账本暂不可用（{'、'.join(names)}）") from exc

    async def ping(self) -> None:
        """Ledger 副本的健康检查。"""
        await self.call("check_health")

    async def close(self) -> None:
        """句柄由 Serve 管理，无需释放。"""


def ledger_client(handle: DeploymentHandle[Any], policy: JobPolicy) -> JobStore:
    """经 Ledger 部署访问的账本（按协议的类型交给调用方）。"""
    return cast(JobStore, LedgerClient(handle, policy))


class LedgerSettlement:
    """Settler：SQLite 账本时作业的收尾交给 Ledger 副本（记结果、经 CallbackSender 投递、记投递）。

    入口每个作业一次句柄调用代替三次账本调用加一次回调调用；回调照样从 CallbackSender 发出。
    同一接收方同时收尾的作业合成一次 settle_many（ReceiverBatchers：慢接收方拖不住别人）。

    只在入口这一侧的账本调用闲着（没有排队、在途的批次）时划算：负载下结果与投递记录搭别的账本
    调用的批、回调按接收方合批，就地收尾每个作业分摊的调用更少，也不给单个的 Ledger 副本加活
    （旧 / 新交替量过：并发 64 时交给 Ledger 慢一成多，见 docs/performance.md）。

    重试：副本死了、暂不可用时整批重发——已记的结果按 owner 重放、已记完投递的答 None，
    投到一半的回调可能再送一次（同一个 webhook-id，接收方按它去重）。超时不重发（Ledger 也许
    还在投）：抛 LedgerUnavailable，本次执行中断，租约到期后由扫描接手。整批的其他失败是旧版本的
    Ledger 不认这个端点（端点本身把每个作业的异常放进各自的结果，不会整批失败）：抛 LedgerOutdated。
    """

    def __init__(
        self, ledger: LedgerClient, callback: CallbackPolicy, metrics: ReportMetrics
    ) -> None:
        self._ledger = ledger
        # 账本的两次写入加一轮投递（含内联重试）最长的时间：只防副本挂住，不限正常的慢投递
        self._timeout_s = 2 * ledger.timeout_s + callback.round_bound_s
        self._seconds = metrics.ledger_op_seconds
        self.receivers = ReceiverBatchers(self._settle_many)

    def worthwhile(self) -> bool:
        """入口的账本调用没有排队、在途的批次时才交给 Ledger（见类说明）。"""
        return self._ledger.batcher.idle

    async def finish_and_deliver(
        self,
        job: ReportJob,
        owner: str,
        payload: CallbackPayload,
        passed: tuple[StateChange, ...],
    ) -> Settled | None:
        """见 Settler.finish_and_deliver；耗时（含投递）记进账本操作的 finish_and_deliver。"""
        use_trace_id(job.trace_id)
        started = time.perf_counter()
        outcome = "error"
        try:
            settled: Settled | None = await self.receivers.call(
                job, "finish_and_deliver", job, owner, payload, passed
            )
            outcome = "ok"
            return settled
        except LedgerOutdated:
            outcome = "outdated"
            raise
        finally:
            self._seconds.observe(
                time.perf_counter() - started, {"op": "finish_and_deliver", "outcome": outcome}
            )

    async def _settle_many(self, calls: list[Call]) -> list[Outcome]:
        try:
            outcomes: list[Outcome] = await self._ledger.call(
                "settle_many", calls, timeout_s=self._timeout_s, resend_on_timeout=False
            )
        except LedgerUnavailable as exc:
            raise LedgerUnavailable("作业账本暂不可用（收尾）") from exc
        except Exception as exc:  # 整批失败只会是端点不认（见类说明）
            raise LedgerOutdated(f"settle_many：{exc!r}") from exc
        return outcomes
