"""账本里的作业记录与对外的状态视图。"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from serve_app.models.reports import CallbackPayload, Completion, ErrorBody, Priority, ReportJob


class JobState(StrEnum):
    """作业状态：accepted → rendering → generating → delivering → 终态。"""

    ACCEPTED = "accepted"
    RENDERING = "rendering"
    GENERATING = "generating"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# 结果尚未产生：可以取消，副本失联后需要重新执行
PRODUCING_STATES = frozenset({JobState.ACCEPTED, JobState.RENDERING, JobState.GENERATING})


class CallbackState(StrEnum):
    """终态回调的投递进度。"""

    WAITING = "waiting"  # 结果尚未产生
    PENDING = "pending"  # 待投递 / 等待下一次重投
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # 超过重投期限或不可重试：等运维 redeliver


class StateChange(BaseModel):
    """一次状态变化。"""

    state: JobState
    at: datetime


class CallbackStatus(BaseModel):
    """回调投递情况（状态查询里的 `callback`）。"""

    state: CallbackState
    attempts: int = Field(0, description="累计 HTTP 尝试次数（含内联重试）")
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    webhook_id: str = Field(description="每次投递都带的 webhook-id 请求头，接收方据此去重")


class JobRecord(BaseModel):
    """账本中一个作业的全部信息（跨 Ray 进程传递）。"""

    model_config = ConfigDict(frozen=True)

    job: ReportJob
    state: JobState
    updated_at: datetime
    outcome: CallbackPayload | None = Field(None, description="终态回调载荷（结果产生后才有）")
    cancel_requested: bool = False
    runs: int = Field(0, description="已开始执行的次数（含崩溃后的恢复）")
    callback: CallbackStatus
    history: list[StateChange] = Field(default_factory=list)

    @property
    def trace_id(self) -> str:
        """作业的 trace_id。"""
        return self.job.trace_id


class ReportStatus(BaseModel):
    """`GET /v1/reports/{trace_id}` 的响应体。"""

    trace_id: str
    status: JobState
    report_type: str
    priority: Priority
    deadline_at: datetime | None = Field(description="到此时还没有结果即 expired；null 为不设期限")
    created_at: datetime
    updated_at: datetime
    report: Completion | None
    error: ErrorBody | None
    metadata: dict[str, JsonValue] | None
    callback: CallbackStatus
    history: list[StateChange]

    @classmethod
    def from_record(cls, record: JobRecord) -> ReportStatus:
        """账本记录 → 对外视图。"""
        outcome = record.outcome
        return cls(
            trace_id=record.trace_id,
            status=record.state,
            report_type=record.job.report_type,
            priority=record.job.priority,
            deadline_at=record.job.deadline_at,
            created_at=record.job.created_at,
            updated_at=record.updated_at,
            report=outcome.report if outcome else None,
            error=outcome.error if outcome else None,
            metadata=record.job.metadata,
            callback=record.callback,
            history=record.history,
        )


class UndeliveredList(BaseModel):
    """`GET /v1/ops/undelivered` 的响应体。"""

    count: int
    reports: list[ReportStatus]


class Admission(BaseModel):
    """受理结果：新建，或同一 Idempotency-Key 的重放；被限流时 `retry_after_s` 非空。"""

    record: JobRecord | None
    replayed: bool = False
    retry_after_s: int | None = None
    conflict_trace_id: str | None = Field(
        None, description="Idempotency-Key 已用于另一个请求体时，原作业的 trace_id"
    )


class CancelResult(BaseModel):
    """取消请求的结果。"""

    record: JobRecord | None
    accepted: bool = Field(description="作业尚未产生结果，已登记取消")


class WorkItem(BaseModel):
    """分给某个副本执行的工作：生成（含投递）或只投递。"""

    record: JobRecord
    produce: bool
