"""日志：每个进程调用一次 `configure_logging()`（幂等），所有行都带 trace_id。"""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

# 没有作业上下文时 trace_id 的占位值
NO_TRACE = "-"

_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "trace_id={extra[trace_id]} | {name}:{function}:{line} - <level>{message}</level>"
)

_configured: tuple[str, str | None] | None = None
# 每个请求记一行 INFO 的 HTTP 客户端库：回调客户端的 httpx，OpenAI SDK 带进来的 httpx2 分支（vLLM
# 导入 SDK；基准的 SDK 写法）——两者的 logger 名不同，漏掉一个，每个请求就多一行重复的日志
_PER_REQUEST_LOGGERS = ("httpx", "httpx2")
# URL 的查询串常带令牌（回调地址里的 ?token=…）：写进任何日志前都隐去
_URL_QUERY = re.compile(r"(\bhttps?://[^\s?#'\"]+)\?[^\s#'\"]*", re.IGNORECASE)
REDACTED = "<已隐去>"


def redact_urls(text: str) -> str:
    """把文本里每个 http(s) URL 的查询串换成占位符（路径保留，便于排查）。"""
    return _URL_QUERY.sub(lambda m: f"{m.group(1)}?{REDACTED}", text)


def _redact_record(record: Record) -> None:
    record["message"] = redact_urls(record["message"])


class InterceptHandler(logging.Handler):
    """把标准库 logging（Ray、uvicorn 等）转发进 loguru，统一格式。"""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # 作业上下文里的 trace_id 优先；没有时用 Ray Serve 记录上的 request_id 作线索
        request_id = getattr(record, "request_id", None)

        def from_stdlib(entry: Record) -> None:
            # 位置取自标准库记录本身（logger 名、函数、行号），不靠栈帧深度推算
            entry["name"] = record.name
            entry["function"] = record.funcName
            entry["line"] = record.lineno
            if request_id and entry["extra"].get("trace_id", NO_TRACE) == NO_TRACE:
                entry["extra"]["trace_id"] = str(request_id)

        logger.patch(from_stdlib).opt(exception=record.exc_info).log(level, record.getMessage())


def _stderr() -> TextIO:
    """loguru 写到哪个 stderr。

    Serve 的吞吐优化模式（RAY_SERVE_LOG_TO_STDERR=0）把副本的 sys.stderr 换成转写进
    Serve 日志的代理对象，每次写都回溯整个调用栈（高负载时约占入口 8% 的 CPU）：
    不是真正的文本流时直接写进程的 stderr。
    """
    if isinstance(sys.stderr, io.TextIOBase) or sys.__stderr__ is None:
        return sys.stderr
    return sys.__stderr__


def configure_logging(level: str = "INFO", json_path: Path | None = None) -> None:
    """配置 loguru 与标准库日志拦截；同一参数重复调用不做任何事。"""
    global _configured
    key = (level, str(json_path) if json_path else None)
    if _configured == key:
        return
    logger.remove()
    logger.configure(extra={"trace_id": NO_TRACE}, patcher=_redact_record)
    # diagnose=False：异常堆栈里不写变量的值（可能含请求内容与密钥）；每个输出都一样
    logger.add(_stderr(), level=level, format=_FORMAT, backtrace=False, diagnose=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        # 多个副本进程追加同一文件：每行一条 JSON，单行写入是原子的
        logger.add(
            str(json_path),
            level=level,
            serialize=True,
            enqueue=False,
            backtrace=False,
            diagnose=False,
        )
    # 其余会向上传播的标准库日志统一经根 logger 进入 loguru
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.INFO, force=True)
    for name in ("uvicorn", "uvicorn.error", "fastapi", *_PER_REQUEST_LOGGERS, "openai"):
        std = logging.getLogger(name)
        std.handlers = [InterceptHandler()]
        std.propagate = False
    # httpx 每个请求一行 INFO（“HTTP Request: POST …”）：与我们自己的阶段日志重复，
    # 高负载时是入口副本可观的 CPU；失败与重试照样由调用方以 WARNING/ERROR 记下
    for name in _PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _route_serve_stderr()
    _configured = key


def _route_serve_stderr() -> None:
    """Ray Serve 的副本日志（含访问日志）：stderr 那一路改走 loguru，文件那一路保留给 dashboard。"""
    serve_logger = logging.getLogger("ray.serve")
    for handler in list(serve_logger.handlers):
        if type(handler) is logging.StreamHandler:
            serve_logger.removeHandler(handler)
            intercept = InterceptHandler()
            # 保留 Ray 的过滤器：它们给记录补上 request_id 等字段，并决定哪些行进 stderr
            for log_filter in handler.filters:
                intercept.addFilter(log_filter)
            serve_logger.addHandler(intercept)
