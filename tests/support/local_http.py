"""本机（127.0.0.1）上的小工具：空闲端口、等 HTTP 端点就绪、等作业在账本里结束、读完请求就断开
（或一直不答）的服务。测试与基准共用。"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx

from serve_app.ledger.records import PRODUCING_STATES, JobState
from tests.support.waiting import wait_until

# 账本里作业结束的状态：结果已产生、回调也有了结论（不再 delivering）
_ENDED = set(JobState) - PRODUCING_STATES - {JobState.DELIVERING}


def free_port() -> int:
    """127.0.0.1 上一个空闲端口。"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_http_ok(url: str, timeout_s: float) -> None:
    """轮询直到 url 返回 200；超时抛 TimeoutError。"""
    wait_until(
        lambda: httpx.get(url, timeout=10).status_code == 200,
        what=f" {url} 就绪",
        timeout_s=timeout_s,
        interval_s=1,
        ignore=(httpx.HTTPError,),
    )


def wait_job_ended(base_url: str, trace_id: str, timeout_s: float) -> dict[str, Any]:
    """轮询 GET /v1/reports/{trace_id} 直到作业在账本里结束，返回那次的状态。

    账本在接收方答 2xx 之后才记下送达：收到回调的那一刻状态可能还是 delivering。"""

    def ended() -> dict[str, Any] | None:
        response = httpx.get(f"{base_url}/v1/reports/{trace_id}", timeout=30)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["status"] in _ENDED else None

    return wait_until(ended, what=f" {trace_id} 在账本里结束", timeout_s=timeout_s, interval_s=0.1)


class HangingUpServer:
    """127.0.0.1 上读完请求头就断开（或一直不答）的 TCP 服务：数它收到了几个连接。"""

    def __init__(self, *, answer_after_s: float | None) -> None:
        self.answer_after_s = answer_after_s
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if self.answer_after_s is not None:
            await asyncio.sleep(self.answer_after_s)
        writer.close()

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
