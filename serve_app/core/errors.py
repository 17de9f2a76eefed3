"""统一的错误层级；`error_info()` 是错误到对外错误码的唯一映射处。

    ReportError                 所有业务错误的基类，带 `code`、`http_status` 与 `headers()`
    ├── RequestError            请求不合法（HTTP 422）
    │   ├── UnsafeCallbackUrl   回调地址不安全（SSRF 防护拒绝）
    │   └── PayloadTooLarge     请求体超过上限（HTTP 413）
    ├── AuthError               缺少或错误的 API key（HTTP 401）
    ├── Forbidden               key 有效但无权访问（运维接口只给管理员 key，HTTP 403）
    ├── JobNotFound             trace_id 未知（HTTP 404）
    ├── JobConflict             作业状态不允许该操作（HTTP 409）
    │   └── IdempotencyConflict 同一 Idempotency-Key 配了不同的请求体
    ├── Overloaded              排队的作业已满（HTTP 429 + Retry-After）
    ├── LedgerUnavailable       作业账本暂不可用（HTTP 503）
    ├── RenderError             模板渲染失败
    ├── LLMError                引擎返回错误或不可用
    │   └── LLMTimeout          生成超时
    ├── OutputTruncated         json 报告被 max_tokens 截断
    └── InvalidOutput           报告不符合声明的格式（重试用尽后）

回调送不到不是作业的错误：作业照样以它的结果结束，投递进度在状态查询的 `callback` 里
（undelivered 等运维 redeliver），所以没有回调的错误码。

每个类自带 HTTP 状态码与响应头（像 vLLM 的入口那样）：serve_app/http/errors.py 只读这两项，
不再另有映射表。5xx 的细节不给调用方。异常会跨 Ray 进程传递，因此只携带可 pickle 的参数。
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """回调 `error.code` 与 HTTP 错误体里的错误码。"""

    INVALID_REQUEST = "invalid_request"
    UNSAFE_CALLBACK_URL = "unsafe_callback_url"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RENDER_ERROR = "render_error"
    LLM_ERROR = "llm_error"
    LLM_TIMEOUT = "llm_timeout"
    OUTPUT_TRUNCATED = "output_truncated"
    INVALID_OUTPUT = "invalid_output"
    NOT_FOUND = "not_found"
    JOB_CONFLICT = "job_conflict"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    OVERLOADED = "overloaded"
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    NOT_READY = "not_ready"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    WORKER_LOST = "worker_lost"
    INTERNAL_ERROR = "internal_error"


class ReportError(Exception):
    """业务错误基类。"""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    # 在 HTTP 请求里抛出时的状态码；500 表示内部错误（对外隐藏细节）
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """HTTP 响应要带的头（如 Retry-After）。"""
        return {}


class RequestError(ReportError):
    """请求不合法：类型未知、输入缺失或多余等。"""

    code = ErrorCode.INVALID_REQUEST
    http_status = 422


class UnsafeCallbackUrl(RequestError):
    """回调地址被 SSRF 防护拒绝（受理时 422；投递时不重试）。"""

    code = ErrorCode.UNSAFE_CALLBACK_URL


class PayloadTooLarge(RequestError):
    """请求体超过 max_body_bytes。"""

    code = ErrorCode.PAYLOAD_TOO_LARGE
    http_status = 413


class AuthError(ReportError):
    """缺少或错误的 API key。"""

    code = ErrorCode.UNAUTHORIZED
    http_status = 401

    def headers(self) -> dict[str, str]:
        """告诉客户端用 Bearer 方案。"""
        return {"WWW-Authenticate": 'Bearer realm="reports"'}


class Forbidden(ReportError):
    """key 有效，但这个调用方无权做这件事。"""

    code = ErrorCode.FORBIDDEN
    http_status = 403


class JobNotFound(ReportError):
    """没有这个 trace_id 的作业。"""

    code = ErrorCode.NOT_FOUND
    http_status = 404


class JobConflict(ReportError):
    """作业当前状态不允许该操作（如取消已完成的作业）。"""

    code = ErrorCode.JOB_CONFLICT
    http_status = 409


class IdempotencyConflict(JobConflict):
    """同一 Idempotency-Key 在有效期内配了不同的请求体。"""

    code = ErrorCode.IDEMPOTENCY_CONFLICT


class Overloaded(ReportError):
    """排队的作业已超过 LLM 阶段能按时处理的量：稍后再试。"""

    code = ErrorCode.OVERLOADED
    http_status = 429

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """按估算的时间稍后重试。"""
        return {"Retry-After": str(self.retry_after_s)}


class LedgerUnavailable(ReportError):
    """作业账本在重试后仍不可用：作业无法安全受理。"""

    code = ErrorCode.LEDGER_UNAVAILABLE
    http_status = 503
    retry_after_s = 5

    def headers(self) -> dict[str, str]:
        """账本通常很快恢复：几秒后重试。"""
        return {"Retry-After": str(self.retry_after_s)}


class LedgerOutdated(Exception):
    """Ledger 副本不认这个端点（滚动升级窗口里还是旧版本）：端点什么都没做，调用方退回旧路。"""


class RenderError(ReportError):
    """模板渲染失败。"""

    code = ErrorCode.RENDER_ERROR


class LLMError(ReportError):
    """LLM 阶段出错（引擎报错、不可用、返回空）。"""

    code = ErrorCode.LLM_ERROR


class LLMTimeout(LLMError):
    """生成超过时限。"""

    code = ErrorCode.LLM_TIMEOUT


class OutputTruncated(ReportError):
    """json 报告在 max_tokens 处被截断（finish_reason: length）：不重试，换长一档的篇幅再交。"""

    code = ErrorCode.OUTPUT_TRUNCATED


class InvalidOutput(ReportError):
    """报告不符合声明的格式（不是 JSON、不符合 schema、缺少必需的标题）：重试用尽后以它失败。"""

    code = ErrorCode.INVALID_OUTPUT

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        # 指标的 reason 标签：unparsable、schema、sections
        self.reason = reason


# 内部错误对外只给这句话，细节只进日志
INTERNAL_ERROR_MESSAGE = "内部错误，请凭 trace_id 联系运维排查"


def error_info(exc: BaseException) -> tuple[ErrorCode, str]:
    """把异常映射成 (错误码, 对外消息)；非业务异常一律隐藏细节。"""
    # 跨 Ray 进程抛出的异常被包装过（RayTaskError），原异常在 `cause` 上
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    if isinstance(exc, ReportError):
        return exc.code, exc.message
    return ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE
