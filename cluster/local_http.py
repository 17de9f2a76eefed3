"""本机（127.0.0.1）上的小工具：找空闲端口、等 HTTP 端点就绪。测试与基准脚本共用。"""

from __future__ import annotations

import socket
import time

import httpx


def free_port() -> int:
    """127.0.0.1 上一个空闲端口。"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_http_ok(url: str, timeout_s: float) -> None:
    """轮询直到 url 返回 200；超时抛 TimeoutError。"""
    deadline = time.monotonic() + timeout_s
    last = "无响应"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=10)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1)
    raise TimeoutError(f"{url} 在 {timeout_s}s 内未就绪：{last}")
