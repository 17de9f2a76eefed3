"""给任一 JobStore 计时：每个操作的耗时按 op / outcome 记进 reports_ledger_op_seconds。

入口副本看到的耗时（含 Ray 往返或连接池排队），正是作业路径实际付出的。
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

from serve_app.core.metrics import ReportMetrics
from serve_app.ledger.records import Admission, CancelResult, JobRecord, JobState, WorkItem
from serve_app.ledger.store import (
    AdvanceResult,
    HeartbeatReply,
    IdempotencyKey,
    JobStore,
    LedgerCounts,
)
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob


class MeteredJobStore:
    """JobStore 的计时包装：行为与被包装的存储完全相同。"""

    def __init__(self, inner: JobStore, metrics: ReportMetrics) -> None:
        self.inner = inner
        self._seconds = metrics.ledger_op_seconds

    async def _timed[T](self, op: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await call
            outcome = "ok"
            return result
        finally:
            self._seconds.observe(time.perf_counter() - started, {"op": op, "outcome": outcome})

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """见 JobStore.admit。"""
        return await self._timed("admit", self.inner.admit(job, owner, idempotency))

    async def get(self, trace_id: str) -> JobRecord | None:
        """见 JobStore.get。"""
        return await self._timed("get", self.inner.get(trace_id))

    async def advance(self, trace_id: str, owner: str, state: JobState) -> AdvanceResult:
        """见 JobStore.advance。"""
        return await self._timed("advance", self.inner.advance(trace_id, owner, state))

    async def finish(
        self, trace_id: str, owner: str, outcome: CallbackPayload
    ) -> CallbackPayload | None:
        """见 JobStore.finish。"""
        return await self._timed("finish", self.inner.finish(trace_id, owner, outcome))

    async def record_delivery(
        self, trace_id: str, owner: str, result: DeliveryOutcome
    ) -> JobRecord | None:
        """见 JobStore.record_delivery。"""
        return await self._timed(
            "record_delivery", self.inner.record_delivery(trace_id, owner, result)
        )

    async def heartbeat(self, owner: str, trace_ids: list[str]) -> HeartbeatReply:
        """见 JobStore.heartbeat。"""
        return await self._timed("heartbeat", self.inner.heartbeat(owner, trace_ids))

    async def claim_due(self, owner: str, limit: int) -> list[WorkItem]:
        """见 JobStore.claim_due。"""
        return await self._timed("claim_due", self.inner.claim_due(owner, limit))

    async def release(self, owner: str, trace_ids: list[str]) -> None:
        """见 JobStore.release。"""
        await self._timed("release", self.inner.release(owner, trace_ids))

    async def request_cancel(self, trace_id: str) -> CancelResult:
        """见 JobStore.request_cancel。"""
        return await self._timed("request_cancel", self.inner.request_cancel(trace_id))

    async def redeliver(self, trace_id: str) -> JobRecord | None:
        """见 JobStore.redeliver。"""
        return await self._timed("redeliver", self.inner.redeliver(trace_id))

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """见 JobStore.list_undelivered。"""
        return await self._timed("list_undelivered", self.inner.list_undelivered(limit))

    async def purge_finished(self, limit: int) -> int:
        """见 JobStore.purge_finished。"""
        return await self._timed("purge_finished", self.inner.purge_finished(limit))

    async def counts(self) -> LedgerCounts:
        """见 JobStore.counts。"""
        return await self._timed("counts", self.inner.counts())

    async def ping(self) -> None:
        """见 JobStore.ping（健康检查，不计时）。"""
        await self.inner.ping()

    async def close(self) -> None:
        """关闭被包装的存储。"""
        await self.inner.close()
