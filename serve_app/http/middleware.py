"""ASGI 中间件：请求体大小上限（超限 413，不把大包读进内存）；提交被拒的计数与受理耗时。"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.core.errors import PayloadTooLarge
from serve_app.core.metrics import Counter
from serve_app.http.errors import report_error_response


class BodySizeLimitMiddleware:
    """按 Content-Length 与实际读取字节数双重检查请求体大小。"""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self._app = app
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in {"POST", "PUT", "PATCH"}:
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            await self._reject(scope, receive, send)
            return
        # 先完整读取（有上限），再回放给应用
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"请求体超过上限 {self._limit} 字节，请精简 inputs 或 metadata")
        await report_error_response(error)(scope, receive, send)


SUBMIT_PATH = "/v1/reports"


class SubmitObservabilityMiddleware:
    """提交请求（POST /v1/reports）：4xx / 5xx 按状态码计数（reports_rejected），写受理耗时。

    放在最外层：413（请求体过大）、401、422、429、503 都经过这里。答复带 `Server-Timing: app;dur=`
    （应用里从收到请求到开始答复的毫秒数）：调用方看到的 202 延迟减去它，就是应用之外（代理、
    连接、事件循环轮到这个请求之前）排的队。
    """

    def __init__(self, app: ASGIApp, rejected: Counter) -> None:
        self._app = app
        self._rejected = rejected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        # Serve 的 route_prefix 可能仍留在 path 前面：按结尾判断
        if not scope["path"].rstrip("/").endswith(SUBMIT_PATH):
            await self._app(scope, receive, send)
            return

        received = time.perf_counter()

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    self._rejected.inc(tags={"reason": str(message["status"])})
                elapsed_ms = (time.perf_counter() - received) * 1000
                timing = (b"server-timing", f"app;dur={elapsed_ms:.1f}".encode())
                message = {**message, "headers": [*message.get("headers", ()), timing]}
            await send(message)

        await self._app(scope, receive, counting_send)
