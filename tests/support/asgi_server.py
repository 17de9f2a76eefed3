"""在 127.0.0.1 的随机端口上用 uvicorn 跑一个 ASGI 应用（后台线程），测试与浏览器经 HTTP 访问。"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import uvicorn

from tests.support.waiting import wait_until


class ServedApp:
    """with ServedApp(app) as served: served.url 可访问；退出时经服务器自己的句柄停下。"""

    def __init__(self, app: Any, what: str = "ASGI 应用") -> None:
        self._what = what
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])), daemon=True
        )

    @property
    def url(self) -> str:
        """根地址（不带结尾的 /）。"""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedApp:
        self._thread.start()
        wait_until(
            lambda: self._server.started, what=f"{self._what}启动", timeout_s=10, interval_s=0.02
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
