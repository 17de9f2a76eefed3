"""backend B 的替身：在 127.0.0.1 上接收回调的真实 HTTP 服务（演示与测试共用）。

可以按顺序编排响应状态码（如先 500 两次再 200），记录每次收到的请求。
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.waiting import wait_until


@dataclass(frozen=True)
class ReceivedCallback:
    """收到的一次回调。"""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status_returned: int
    raw: bytes = b""
    # 收到的时刻（time.monotonic()，响应之前记）：soak 据此算受理 → 回调与故障后的恢复
    received_at: float = 0.0


@dataclass
class _Script:
    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    delay_s: float = 0.0
    retry_after_s: int | None = None


class CallbackReceiver:
    """在后台线程里跑 uvicorn；`url` 为回调地址。用作上下文管理器保证关闭。"""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self._script = _Script()
        self._received: list[ReceivedCallback] = []
        self._cond = threading.Condition()
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        """回调地址（路径 /hooks/reports）。"""
        return f"http://{self._host}:{self.port}/hooks/reports"

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self) -> CallbackReceiver:
        """启动并等到开始监听。"""
        self._thread.start()
        wait_until(
            lambda: self._server.started, what="回调接收方启动", timeout_s=10, interval_s=0.02
        )
        return self

    def stop(self) -> None:
        """关闭服务并等待线程退出。"""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(
        self,
        statuses: Iterable[int] = (),
        default_status: int = 200,
        delay_s: float = 0.0,
        retry_after_s: int | None = None,
    ) -> None:
        """编排接下来的响应：先依次返回 statuses，之后一直返回 default_status。

        delay_s：每次响应前等待；retry_after_s：非 2xx 响应带上 Retry-After。
        """
        with self._cond:
            self._script = _Script(list(statuses), default_status, delay_s, retry_after_s)

    async def _handle(self, request: Request) -> JSONResponse:
        raw = await request.body()
        received_at = time.monotonic()
        with self._cond:
            script = self._script
            status = script.statuses.pop(0) if script.statuses else script.default_status
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        record = ReceivedCallback(
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            status_returned=status,
            raw=raw,
            received_at=received_at,
        )
        with self._cond:
            self._received.append(record)
            self._cond.notify_all()
        headers = {}
        if script.retry_after_s is not None and not 200 <= status < 300:
            headers["Retry-After"] = str(script.retry_after_s)
        return JSONResponse({"ok": 200 <= status < 300}, status_code=status, headers=headers)

    @property
    def received(self) -> list[ReceivedCallback]:
        """到目前为止收到的全部回调（副本）。"""
        with self._cond:
            return list(self._received)

    def wait_for(self, count: int, timeout_s: float) -> list[ReceivedCallback]:
        """等到至少收到 count 次回调；超时抛 TimeoutError。"""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._received) >= count, timeout_s)
            if not ok:
                raise TimeoutError(f"{timeout_s}s 内只收到 {len(self._received)}/{count} 次回调")
            return list(self._received)

    def delivered(self) -> dict[str, ReceivedCallback]:
        """按 trace_id 汇总成功（2xx）收下的回调。"""
        return {
            r.body["trace_id"]: r
            for r in self.received
            if 200 <= r.status_returned < 300 and "trace_id" in r.body
        }
