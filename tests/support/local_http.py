"""本机（127.0.0.1）上的小工具：找空闲端口、等 HTTP 端点就绪。测试与基准脚本共用。"""

from __future__ import annotations

import socket

import httpx

from tests.support.waiting import wait_until


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
