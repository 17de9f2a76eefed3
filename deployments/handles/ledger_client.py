"""经 DeploymentHandle 调用 Ledger 部署的 JobStore 实现：每次调用有超时，瞬时错误重试。

每个作业路径上的调用（受理、推进、结果、投递、查询）经 CallBatcher 合并：并发的作业共用
一次句柄调用（Ledger.apply），账本在一个事务里执行整批；续租、扫描等周期性调用直接发出。
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from ray.serve.handle import DeploymentHandle

from deployments.handles.ray_errors import TRANSIENT_HANDLE_ERRORS, handle_retrying
from serve_app.core.errors import LedgerUnavailable
from serve_app.core.settings import JobPolicy
from serve_app.ledger.call_batcher import Call, CallBatcher, Outcome
from serve_app.ledger.records import Admission, CancelResult, JobRecord, JobState, WorkItem
from serve_app.ledger.store import AdvanceResult, HeartbeatReply, IdempotencyKey, LedgerCounts
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

# 重试用尽后仍是这些异常：账本不可用
_UNAVAILABLE: tuple[type[Exception], ...] = (*TRANSIENT_HANDLE_ERRORS, TimeoutError)


class LedgerClient:
    """JobStore 的句柄实现（与 Ledger 部署公开的方法一一对应）。"""

    def __init__(self, handle: DeploymentHandle[Any], policy: JobPolicy) -> None:
        self._handle = handle
        self._timeout_s = policy.ledger_call_timeout_s
        self.batcher = CallBatcher(self._apply)

    async def _call(self, method: str, *args: Any) -> Any:
        """直接调用 Ledger 的一个方法（超时、重试；用尽即 LedgerUnavailable）。"""
        endpoint = getattr(self._handle, method)

        async def attempt() -> Any:
            async with asyncio.timeout(self._timeout_s):
                return await endpoint.remote(*args)

        retrying = handle_retrying(also=_UNAVAILABLE, initial_backoff_s=0.2, max_backoff_s=5)
        try:
            return await retrying(attempt)
        except _UNAVAILABLE as exc:
            raise LedgerUnavailable(f"作业账本暂不可用（{method}）") from exc

    async def _apply(self, calls: list[Call]) -> list[Outcome]:
        """一批调用 → 一次 Ledger.apply（整批重试：每个调用都可安全重放，见 JobStore）。"""
        try:
            return cast(list[Outcome], await self._call("apply", calls))
        except LedgerUnavailable as exc:
            names = sorted({method for method, _ in calls})
            raise LedgerUnavailable(f"作业账本暂不可用（{'、'.join(names)}）") from exc

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """见 JobStore.admit（按 trace_id 幂等，超时重试不会重复写入）。"""
        return cast(Admission, await self.batcher.call("admit", job, owner, idempotency))

    async def get(self, trace_id: str) -> JobRecord | None:
        """见 JobStore.get。"""
        return cast(JobRecord | None, await self.batcher.call("get", trace_id))

    async def advance(self, trace_id: str, owner: str, state: JobState) -> AdvanceResult:
        """见 JobStore.advance。"""
        return cast(AdvanceResult, await self.batcher.call("advance", trace_id, owner, state))

    async def finish(
        self, trace_id: str, owner: str, outcome: CallbackPayload
    ) -> CallbackPayload | None:
        """见 JobStore.finish。"""
        return cast(
            CallbackPayload | None, await self.batcher.call("finish", trace_id, owner, outcome)
        )

    async def record_delivery(
        self, trace_id: str, owner: str, result: DeliveryOutcome
    ) -> JobRecord | None:
        """见 JobStore.record_delivery。"""
        return cast(
            JobRecord | None, await self.batcher.call("record_delivery", trace_id, owner, result)
        )

    async def heartbeat(self, owner: str, trace_ids: list[str]) -> HeartbeatReply:
        """见 JobStore.heartbeat。"""
        return cast(HeartbeatReply, await self._call("heartbeat", owner, trace_ids))

    async def claim_due(self, owner: str, limit: int) -> list[WorkItem]:
        """见 JobStore.claim_due。"""
        return cast(list[WorkItem], await self._call("claim_due", owner, limit))

    async def release(self, owner: str, trace_ids: list[str]) -> None:
        """见 JobStore.release。"""
        await self._call("release", owner, trace_ids)

    async def request_cancel(self, trace_id: str) -> CancelResult:
        """见 JobStore.request_cancel。"""
        return cast(CancelResult, await self._call("request_cancel", trace_id))

    async def redeliver(self, trace_id: str) -> JobRecord | None:
        """见 JobStore.redeliver。"""
        return cast(JobRecord | None, await self._call("redeliver", trace_id))

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """见 JobStore.list_undelivered。"""
        return cast(list[JobRecord], await self._call("list_undelivered", limit))

    async def purge_finished(self, limit: int) -> int:
        """见 JobStore.purge_finished。"""
        return cast(int, await self._call("purge_finished", limit))

    async def counts(self) -> LedgerCounts:
        """见 JobStore.counts。"""
        return cast(LedgerCounts, await self._call("counts"))

    async def ping(self) -> None:
        """见 JobStore.ping：Ledger 副本的健康检查。"""
        await self._call("check_health")

    async def close(self) -> None:
        """句柄由 Serve 管理，无需释放。"""
