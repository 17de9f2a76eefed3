"""本机（127.0.0.1）上的小工具：空闲端口、等 HTTP 端点就绪、等作业在账本里结束。测试与基准共用。"""

from __future__ import annotations

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
