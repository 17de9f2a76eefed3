"""账本存储的小接口（JobStore）与它的操作表。

两个实现：SQLite（sqlite_store，单个 Ledger 副本持有，入口经句柄访问）与 Postgres
（postgres_store，每个入口副本直连）。存储只管读、写与合批；每个操作“读到的行 → 写什么、答什么”
的判定在 decisions.py，两种存储共用。

所有“谁在执行这个作业”的判断都由存储在事务里完成（租约 owner + 到期时间），
因此多个入口副本协作时不会重复执行同一个作业。

加一个账本操作只改这里的协议与两个存储（判定放 decisions.py）：计时包装、账本客户端、
Ledger 部署都按 OPERATIONS 转发，不再逐个列出。
"""

from __future__ import annotations

import inspect
from typing import Protocol

from pydantic import BaseModel, Field

from serve_app.ledger.records import (
    Admission,
    CancelResult,
    JobRecord,
    JobState,
    StateChange,
    WorkItem,
)
from serve_app.ledger.rules import AdvanceResult
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

__all__ = [
    "AdvanceResult",
    "HeartbeatReply",
    "IdempotencyKey",
    "JobStore",
    "LedgerCounts",
    "LedgerSchemaError",
    "OPERATIONS",
]


class LedgerSchemaError(RuntimeError):
    """账本（文件或数据库）的结构版本比本程序新：拒绝使用（旧程序不能改写新结构）。"""


class IdempotencyKey(BaseModel):
    """幂等键：`scope_key` 已含调用方身份；`body_hash` 是规范化请求体的摘要。"""

    scope_key: str = Field(min_length=1)
    body_hash: str = Field(min_length=1)


class HeartbeatReply(BaseModel):
    """续租结果：要取消的作业，以及已不归本副本的作业。"""

    cancel: list[str] = Field(default_factory=list)
    lost: list[str] = Field(default_factory=list)


class LedgerCounts(BaseModel):
    """账本的几个总数（指标的仪表）。"""

    active: int = Field(description="尚未结束的作业（受理、渲染、生成、投递中）")
    pending_redeliveries: int = Field(description="投递失败、等待按重投表再投的作业")
    undelivered: int = Field(description="已放弃自动重投的作业")


class JobStore(Protocol):
    """作业账本。owner 是执行副本的唯一标识。"""

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """受理：写入作业并由 owner 持有租约；幂等重放、键冲突与限流都在同一事务里判定。"""
        ...

    async def get(self, trace_id: str) -> JobRecord | None:
        """按 trace_id 取作业。"""
        ...

    async def advance(
        self, trace_id: str, owner: str, state: JobState, passed: tuple[StateChange, ...] = ()
    ) -> AdvanceResult:
        """进入下一个生成阶段；已请求取消返回 cancelled，租约已丢返回 lost。

        passed：途经而没有单独写过的阶段（渲染、生成很快时不单为它们写账本），按各自的时刻
        依次与 state 一起记进历史；最后一条与 state 是同一阶段时，它就是 state 的那一条。"""
        ...

    async def finish(
        self,
        trace_id: str,
        owner: str,
        outcome: CallbackPayload,
        passed: tuple[StateChange, ...] = (),
    ) -> CallbackPayload | None:
        """记录结果并进入 delivering；已请求取消时结果改为 cancelled。租约已丢返回 None。

        passed 同 advance：很快做完、没有单独写下的渲染与生成，随结果一起记进历史。"""
        ...

    async def record_delivery(
        self, trace_id: str, owner: str, result: DeliveryOutcome
    ) -> JobRecord | None:
        """记录一轮投递：送达即终态；否则安排下一次重投或标记 undelivered，并释放租约。

        只有仍持有租约的 owner 能记录（租约已归别人时返回 None，新主人会再投一次）。
        """
        ...

    async def heartbeat(self, owner: str, trace_ids: list[str]) -> HeartbeatReply:
        """为 owner 持有的作业续租。"""
        ...

    async def claim_due(self, owner: str, limit: int) -> list[WorkItem]:
        """领取租约已过期的作业与到期的重投。"""
        ...

    async def release(self, owner: str, trace_ids: list[str]) -> None:
        """交还租约（副本关闭时），其他副本可立即接手。"""
        ...

    async def request_cancel(self, trace_id: str) -> CancelResult:
        """登记取消；只有尚未产生结果的作业可以取消。"""
        ...

    async def redeliver(self, trace_id: str) -> JobRecord | None:
        """已有结果的作业：重新安排立即投递（webhook-id 不变）。"""
        ...

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """已放弃自动重投的作业（最近的在前）。"""
        ...

    async def purge_finished(self, limit: int) -> int:
        """删掉超过保留期的已结束作业（最多 limit 个）与过期的幂等键；返回删掉的作业数。"""
        ...

    async def counts(self) -> LedgerCounts:
        """当前的作业总数（走索引，周期性调用）。"""
        ...

    async def ping(self) -> None:
        """能连上并执行一条查询即返回，否则抛出异常（健康检查用）。"""
        ...

    async def close(self) -> None:
        """关闭连接。"""
        ...


# 生命周期方法：健康检查与关闭不是账本操作（不计时、不经 Ledger.apply 转发）
_LIFECYCLE = frozenset({"ping", "close"})

# 账本操作表：由协议本身导出（协议加一个方法，这里自动跟上）；计时包装、账本客户端与 Ledger 部署
# 都按它转发，单元测试逐个操作走一遍包装与客户端
OPERATIONS: frozenset[str] = frozenset(
    name
    for name, member in vars(JobStore).items()
    if inspect.iscoroutinefunction(member) and not name.startswith("_") and name not in _LIFECYCLE
)
