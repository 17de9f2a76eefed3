"""作业服务：路由与账本、执行器之间的一层（受理、查询、取消、重投、运维列表）。"""

from __future__ import annotations

import hashlib
import json
import uuid

from loguru import logger

from serve_app.core.errors import (
    IdempotencyConflict,
    JobConflict,
    JobNotFound,
    Overloaded,
    RequestError,
)
from serve_app.core.metrics import ReportMetrics
from serve_app.ledger.records import JobRecord, ReportStatus, UndeliveredList
from serve_app.ledger.store import IdempotencyKey, JobStore
from serve_app.models.reports import ReportJob, ReportRequest
from serve_app.services.runner import JobRunner

MAX_IDEMPOTENCY_KEY_CHARS = 255


def idempotency_key(raw: str | None, principal: str, body: ReportRequest) -> IdempotencyKey | None:
    """Idempotency-Key 头 → 按调用方隔离的键与请求体摘要；头不合法抛 RequestError。

    principal 是调用方名：同一调用方轮换 key 后，同一个 Idempotency-Key 仍是同一个作业。
    """
    if raw is None:
        return None
    if not raw or len(raw) > MAX_IDEMPOTENCY_KEY_CHARS or not raw.isprintable():
        raise RequestError(
            f"Idempotency-Key 必须是 1 到 {MAX_IDEMPOTENCY_KEY_CHARS} 个可打印字符（建议用 UUID）"
        )
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    scope = hashlib.sha256(f"{principal}\0{raw}".encode()).hexdigest()
    return IdempotencyKey(scope_key=scope, body_hash=hashlib.sha256(canonical.encode()).hexdigest())


class JobService:
    """入口副本里的作业操作；作业状态以账本为准。"""

    def __init__(
        self, store: JobStore, runner: JobRunner, metrics: ReportMetrics | None = None
    ) -> None:
        self._store = store
        self._runner = runner
        self._metrics = metrics or ReportMetrics()

    async def admit(self, job: ReportJob, key: IdempotencyKey | None) -> tuple[JobRecord, bool]:
        """写入账本（202 之前）并开始执行；返回 (记录, 是否幂等重放)。"""
        admission = await self._store.admit(job, self._runner.owner, key)
        taken = admission.record
        if taken is not None and not admission.replayed and taken.job != job:
            # trace_id 已属于另一个作业（调用方重复使用了同一个 X-Request-ID）：另发一个
            fresh = str(uuid.uuid4())
            logger.warning("trace_id {} 已被另一个作业使用，改用 {}", job.trace_id, fresh)
            job = job.model_copy(update={"trace_id": fresh})
            admission = await self._store.admit(job, self._runner.owner, key)
        if admission.conflict_trace_id is not None:
            raise IdempotencyConflict(
                "Idempotency-Key 已用于另一个不同的请求体"
                f"（trace_id {admission.conflict_trace_id}）：换一个 key，或发送完全相同的请求体"
            )
        if admission.retry_after_s is not None:
            raise Overloaded(
                f"排队的作业已满，请 {admission.retry_after_s} 秒后重试",
                retry_after_s=admission.retry_after_s,
            )
        assert admission.record is not None
        if not admission.replayed:
            self._metrics.accepted.inc(tags={"report_type": job.report_type})
            self._runner.submit(admission.record)
        return admission.record, admission.replayed

    async def _owned(self, trace_id: str, caller: str | None) -> JobRecord:
        """取作业；不存在或不属于 caller（None 表示管理员，看得到全部）都抛 JobNotFound。"""
        record = await self._store.get(trace_id)
        if record is None or (caller is not None and record.job.caller != caller):
            raise JobNotFound(f"没有 trace_id 为 {trace_id} 的作业")
        return record

    async def status(self, trace_id: str, caller: str | None) -> ReportStatus:
        """作业状态；未知或别的调用方的 trace_id 抛 JobNotFound。"""
        return ReportStatus.from_record(await self._owned(trace_id, caller))

    async def cancel(self, trace_id: str, caller: str | None) -> ReportStatus:
        """取消尚未产生结果的作业；已有结果抛 JobConflict。"""
        await self._owned(trace_id, caller)
        result = await self._store.request_cancel(trace_id)
        if result.record is None:
            raise JobNotFound(f"没有 trace_id 为 {trace_id} 的作业")
        if not result.accepted:
            raise JobConflict(
                f"作业已处于 {result.record.state}，结果已产生，不能再取消"
                "（结果回调会照常送达；需要再次投递请用 redeliver）"
            )
        with logger.contextualize(trace_id=trace_id):
            if self._runner.cancel_local(trace_id):
                logger.info("已取消：本副本上的作业离开队列或中止生成")
            else:
                # 在别的副本上：其续租时得知；无人持有：扫描时直接投递 cancelled
                logger.info("已登记取消")
                self._runner.wake()
        return ReportStatus.from_record(result.record)

    async def redeliver(self, trace_id: str, caller: str | None) -> ReportStatus:
        """重新投递已产生结果的作业的回调（webhook-id 不变）。"""
        await self._owned(trace_id, caller)
        record = await self._store.redeliver(trace_id)
        if record is None:
            raise JobNotFound(f"没有 trace_id 为 {trace_id} 的作业")
        if record.outcome is None:
            raise JobConflict(f"作业仍在 {record.state}，尚无结果可投递")
        with logger.contextualize(trace_id=trace_id):
            logger.info("已安排重新投递回调")
        self._runner.wake()
        return ReportStatus.from_record(record)

    async def undelivered(self, limit: int) -> UndeliveredList:
        """已放弃自动重投的作业（运维列表）。"""
        records = await self._store.list_undelivered(limit)
        return UndeliveredList(
            count=len(records), reports=[ReportStatus.from_record(r) for r in records]
        )
