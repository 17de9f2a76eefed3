"""报告请求、受理响应、作业与回调载荷。字段与 DESIGN.md 的 v1 契约一致。"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, JsonValue, model_validator

from serve_app.core.errors import ErrorCode
from serve_app.models.output import OutputFormat, check_schema, nesting_depth

ReportLength = Literal["short", "medium", "long"]
# 优先级：入口副本的作业队列与引擎的调度都按它排（high 先于 normal 先于 low）
Priority = Literal["high", "normal", "low"]
# 本服务里的先后（数小的先）：副本内的作业队列与账本的领取都照它排
PRIORITY_RANK: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
# 引擎（vLLM --scheduling-policy priority）的优先级：数小的先调度。normal 为 0：vLLM 没开优先级调度
# 时只收 0（别的值答 400），于是只有 high / low 需要引擎开着优先级调度
ENGINE_PRIORITY: dict[str, int] = {"high": -1, "normal": 0, "low": 1}
# deadline_s 的上限：7 天
MAX_DEADLINE_S = 7 * 86400

# 输入与元数据的数量与大小上限（请求体大小另由中间件限制）
MAX_INPUTS = 32
MAX_METADATA_KEYS = 32
MAX_KEY_CHARS = 64
MAX_METADATA_BYTES = 8 * 1024
# inputs / metadata 的嵌套层数上限（更深的在重读账本时会撞上 pydantic 的递归上限）
MAX_NESTING = 32
MAX_CALLBACK_URL_CHARS = 2048


class ReportRequest(BaseModel):
    """`POST /v1/reports` 的请求体。"""

    model_config = ConfigDict(extra="forbid")

    report_type: str = Field(min_length=1, max_length=64, description="报告类型名")
    inputs: dict[str, JsonValue] = Field(
        default_factory=dict, max_length=MAX_INPUTS, description="模板所需的输入"
    )
    length: ReportLength | None = Field(None, description="篇幅；缺省用模板默认值")
    callback_url: AnyHttpUrl | None = Field(None, description="回调地址；缺省用服务配置的默认地址")
    metadata: dict[str, JsonValue] | None = Field(
        None,
        max_length=MAX_METADATA_KEYS,
        description=f"原样回传的调用方数据（序列化后不超过 {MAX_METADATA_BYTES} 字节）",
    )
    output_schema: dict[str, JsonValue] | None = Field(
        None,
        description="要 JSON 报告时给出它要符合的 JSON Schema（Draft 2020-12）：任何类型都可以；"
        "报告解析并校验后放在回调的 report.data",
    )
    priority: Priority = Field(
        "normal",
        description="high / normal / low：排队与引擎调度都按它排；high 只给配置允许的调用方",
    )
    deadline_s: float | None = Field(
        None,
        gt=0,
        le=MAX_DEADLINE_S,
        description=f"受理后多少秒内要结果（0 < deadline_s ≤ {MAX_DEADLINE_S}，即 7 天）："
        "到时还没有结果的作业以 expired（deadline_exceeded）结束，正在生成的在引擎里中止；"
        "缺省用服务配置的默认期限（可不设）",
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> ReportRequest:
        long_keys = [
            k[:20] for k in (*self.inputs, *(self.metadata or {})) if len(k) > MAX_KEY_CHARS
        ]
        if long_keys:
            raise ValueError(f"键名不能超过 {MAX_KEY_CHARS} 个字符：{long_keys}")
        for name, value in (("inputs", self.inputs), ("metadata", self.metadata)):
            if value is not None and nesting_depth(value, MAX_NESTING) > MAX_NESTING:
                raise ValueError(f"{name} 嵌套超过 {MAX_NESTING} 层：请把数据拍平一些")
        if self.callback_url is not None and len(str(self.callback_url)) > MAX_CALLBACK_URL_CHARS:
            raise ValueError(f"callback_url 不能超过 {MAX_CALLBACK_URL_CHARS} 个字符")
        if self.metadata is not None:
            size = len(json.dumps(self.metadata, ensure_ascii=False).encode())
            if size > MAX_METADATA_BYTES:
                raise ValueError(f"metadata 过大：{size} 字节，上限 {MAX_METADATA_BYTES}")
        if self.output_schema is not None:
            check_schema(self.output_schema, "output_schema")
        return self


class ReportAccepted(BaseModel):
    """`202` 响应体。"""

    trace_id: str
    status: Literal["accepted"] = "accepted"


class ReportJob(BaseModel):
    """已受理的作业：跨部署传递的全部信息（可 pickle）。"""

    model_config = ConfigDict(frozen=True)

    trace_id: str
    report_type: str
    inputs: dict[str, JsonValue]
    length: ReportLength
    callback_url: str
    metadata: dict[str, JsonValue] | None = None
    created_at: datetime
    # 创建它的调用方（由 key 决定，不是 key 本身）；旧作业没有这个字段，算 default
    caller: str = "default"
    # 请求自带的输出 schema：随作业存进账本，重启、换副本执行都用它
    output_schema: dict[str, JsonValue] | None = None
    priority: Priority = "normal"
    # 到这个时刻还没有结果就以 expired 结束（随作业存进账本，重启、接手都照它）
    deadline_at: datetime | None = None

    def expired_at(self, now: datetime) -> bool:
        """期限已过（没有期限的作业永不过期）。"""
        return self.deadline_at is not None and now >= self.deadline_at


class Usage(BaseModel):
    """token 用量。"""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class Completion(BaseModel):
    """LLM 阶段的结果，也是回调里的 `report`。"""

    content: str = Field(description="模型写出的原文")
    model: str
    finish_reason: str | None
    usage: Usage
    format: OutputFormat = Field("markdown", description="报告的格式：markdown 或 json")
    data: JsonValue = Field(
        None, description="format 为 json 时：解析并按 schema 校验过的对象（markdown 时为 null）"
    )


class ErrorBody(BaseModel):
    """回调与 HTTP 错误体中的 `error`。"""

    code: ErrorCode
    message: str


class ErrorResponse(BaseModel):
    """所有 4xx/5xx 响应的统一错误体 `{"error": {"code", "message"}}`。"""

    error: ErrorBody


class Ready(BaseModel):
    """`GET /readyz` 的 200：能接活；`llm` 说引擎此刻是热的还是缩到了零（第一个作业要等冷启动）。"""

    status: Literal["ready"] = "ready"
    llm: Literal["warm", "cold"] = Field(
        description="warm：有 LLM 副本在跑；"
        "cold：缩到了零个副本，下一个作业会把它拉起（要等冷启动）"
    )


class NotReady(ErrorResponse):
    """`GET /readyz` 的 503：LLM 阶段尚不能接活，或渲染、回调、账本部署还没有运行中的副本
    （message 点名是哪个）。"""

    status: Literal["not_ready"] = "not_ready"


class CallbackPayload(BaseModel):
    """回调给 backend B 的请求体。"""

    trace_id: str
    status: Literal["succeeded", "failed", "cancelled", "expired"]
    report_type: str
    report: Completion | None
    error: ErrorBody | None
    metadata: dict[str, JsonValue] | None
    created_at: datetime
    completed_at: datetime

    @model_validator(mode="after")
    def _check_outcome(self) -> CallbackPayload:
        if self.status == "succeeded" and (self.report is None or self.error is not None):
            raise ValueError("succeeded 必须带 report 且不带 error")
        if self.status != "succeeded" and (self.error is None or self.report is not None):
            raise ValueError(f"{self.status} 必须带 error 且不带 report")
        return self

    @classmethod
    def succeeded(cls, job: ReportJob, report: Completion) -> CallbackPayload:
        """成功回调。"""
        return cls(
            trace_id=job.trace_id,
            status="succeeded",
            report_type=job.report_type,
            report=report,
            error=None,
            metadata=job.metadata,
            created_at=job.created_at,
            completed_at=utc_now(),
        )

    @classmethod
    def failed(cls, job: ReportJob, code: ErrorCode, message: str) -> CallbackPayload:
        """失败回调。"""
        return cls._unsuccessful(job, "failed", code, message)

    @classmethod
    def cancelled(cls, job: ReportJob) -> CallbackPayload:
        """取消回调：调用方用 DELETE 取消了作业。"""
        return cls._unsuccessful(job, "cancelled", ErrorCode.CANCELLED, "作业已按请求取消")

    @classmethod
    def expired(cls, job: ReportJob) -> CallbackPayload:
        """过期回调：到 deadline_at 还没有结果（排队的不再开始，生成中的已中止）。"""
        deadline = job.deadline_at.isoformat() if job.deadline_at is not None else "期限"
        return cls._unsuccessful(
            job,
            "expired",
            ErrorCode.DEADLINE_EXCEEDED,
            f"到 {deadline} 仍没有结果，作业已过期（deadline_s）",
        )

    @classmethod
    def _unsuccessful(
        cls,
        job: ReportJob,
        status: Literal["failed", "cancelled", "expired"],
        code: ErrorCode,
        message: str,
    ) -> CallbackPayload:
        return cls(
            trace_id=job.trace_id,
            status=status,
            report_type=job.report_type,
            report=None,
            error=ErrorBody(code=code, message=message),
            metadata=job.metadata,
            created_at=job.created_at,
            completed_at=utc_now(),
        )


class DeliveryOutcome(BaseModel):
    """一次回调投递（含内联重试）的结果；未送达时由账本安排持久化重投。"""

    delivered: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None
    permanent: bool = Field(False, description="不可重试的失败（4xx、SSRF 拒绝）：不再自动重投")


def webhook_id(trace_id: str) -> str:
    """一个作业的全部投递共用的 webhook-id（Standard Webhooks 去重键，跨重试与重启不变）。"""
    return f"msg_{trace_id}"


def utc_now() -> datetime:
    """当前 UTC 时间（带时区）。"""
    return datetime.now(UTC)
