"""把作业的 trace_id 设为 Serve 的 request_id：之后经句柄的调用（渲染、LLM、回调）在各副本的
访问日志与 Serve 的日志记录里都带这个 id，dashboard 的日志搜索按 trace_id 找得到整条链路。

上下文变量按 asyncio 任务隔离：每个作业在自己的任务里执行，设置只影响这一个作业。
"""

from __future__ import annotations

import uuid

from deployments.ray_private import current_request_id, set_request_id


def use_trace_id(trace_id: str) -> None:
    """当前任务之后的句柄调用以 trace_id 作 request_id。"""
    set_request_id(trace_id)


def serve_request_trace_id() -> str:
    """新作业的 trace_id：取 Serve 给这个 HTTP 请求的 request_id（代理与入口的访问日志都记它）。

    它不是规范的 UUID 时（调用方自带了别的格式的 X-Request-ID）另发一个 UUID。
    """
    request_id = current_request_id()
    try:
        canonical = str(uuid.UUID(request_id))
    except ValueError:
        return str(uuid.uuid4())
    return request_id if canonical == request_id else str(uuid.uuid4())
