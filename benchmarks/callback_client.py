"""回调客户端：每次投递花多少 CPU，几种 HTTP 客户端在同一次运行里交替比。

    python -m benchmarks.callback_client [--deliveries 3000] [--concurrency 1,16,64] [--rounds 3]

对一个 backend B 替身（127.0.0.1 上的 uvicorn，另一个进程：它的 CPU 不算进来）投递同样的请求体：
  client：今天的 CallbackClient（aiohttp；签名、SSRF 检查过的连接、重试包装、按主机的名额都在）；
  aiohttp：不经 CallbackClient，一个 aiohttp 会话直接 POST（不限连接数）——HTTP 本身的下限；
  httpx：一个 httpx.AsyncClient 直接 POST（回调副本 12-07 以前的库，同样的连接上限，
  httpcore 的池子）；
  httpx2：OpenAI SDK 带进来的 httpx2 分支（pydantic/httpx2，修了 httpcore 连接池平方的那一步），
  同样的上限。
每档并发、每种客户端交替跑 --rounds 轮，每轮先预热再计 --deliveries 次，取 CPU ms/投递的中位数。
日志不输出（loguru 的处理器先摘掉）：量的是 HTTP 与我们的包装，不是写日志。
结果写到 benchmarks/results/callback-client-<时间>.json / .md / .png（--out-dir 改位置），
并更新同目录的 callback-client-latest.*。只访问 127.0.0.1。
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.common import (
    ClientReport,
    Close,
    Send,
    client_meta,
    client_parser,
    measure_variant,
    prepare_client_run,
    run_client_benchmark,
)
from serve_app.core.settings import CallbackPolicy
from serve_app.delivery.client import CallbackClient
from serve_app.delivery.url_guard import CallbackTargetPolicy
from tests.support.local_http import free_port
from tests.support.sample import failed_payload

TARGETS = CallbackTargetPolicy(allow_loopback=True)
POLICY = CallbackPolicy()
_HEADERS = {"Content-Type": "application/json"}


def _client(url: str) -> tuple[Send, Close]:
    """经真实的 CallbackClient 投递（签名、SSRF 检查、重试包装都在）。"""
    client = CallbackClient(POLICY, TARGETS)
    payload = failed_payload("t-bench")

    async def send() -> None:
        outcome = await client.deliver(url, payload)
        if not outcome.delivered:
            raise RuntimeError(f"投递失败 {outcome}")

    return send, client.aclose


def _body() -> bytes:
    return failed_payload("t-bench").model_dump_json().encode()


def _aiohttp(url: str) -> tuple[Send, Close]:
    """一个 aiohttp 会话直接发同样的请求体（会话在第一次调用时、在事件循环里建）。"""
    body = _body()
    sessions: list[aiohttp.ClientSession] = []

    async def send() -> None:
        if not sessions:
            sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        async with sessions[0].post(url, data=body, headers=_HEADERS) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

    async def close() -> None:
        for session in sessions:
            await session.close()

    return send, close


# 回调副本 12-07 以前给 httpx 的连接上限：不限总数，保持 ≥ 100 个空闲连接
_LIMITS: dict[str, Any] = {
    "max_connections": None,
    "max_keepalive_connections": max(POLICY.max_concurrent_per_host, 100),
}


def _httpx_like(module: Any) -> Callable[[str], tuple[Send, Close]]:
    """httpx 或 httpx2 的 AsyncClient 直接发同样的请求体（两者的接口相同）。"""

    def make(url: str) -> tuple[Send, Close]:
        client = module.AsyncClient(limits=module.Limits(**_LIMITS))
        body = _body()

        async def send() -> None:
            response = await client.post(url, content=body, headers=_HEADERS)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")

        return send, client.aclose

    return make


VARIANTS: dict[str, Callable[[str], tuple[Send, Close]]] = {
    "client": _client,
    "aiohttp": _aiohttp,
    "httpx": _httpx_like(httpx),
    "httpx2": _httpx_like(httpx2),
}


def _serve(port: int) -> None:
    """backend B 替身：读完请求体，答一个小的 JSON（像大多数接收方那样保持连接）。"""

    async def hook(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")

    async def ready(_: Request) -> Response:
        return Response(b"ok")

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


REPORT = ClientReport(
    prefix="callback-client",
    title="回调客户端",
    call="投递",
    key="client",
    key_title="客户端",
    plot_call="delivery",
    panels=(
        ("CallbackClient (aiohttp, signed, SSRF-checked) / bare aiohttp", lambda n: "x" not in n),
        ("bare httpx / httpx2, same request", lambda n: "x" in n),
    ),
)


def main(argv: list[str] | None = None) -> int:
    """各种客户端交替测，打印并保存结果。"""
    parser = client_parser(__doc__, "deliveries", "clients", VARIANTS)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0
    prepare_client_run(args.out_dir)
    clients = args.clients.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    meta = client_meta(
        args.deliveries, args.rounds, "bench-callback", argv, aiohttp=aiohttp.__version__
    )
    receiver = ["benchmarks.callback_client", "--serve", str(port)]
    run_client_benchmark(
        REPORT,
        (receiver, f"http://127.0.0.1:{port}/"),
        clients,
        levels,
        lambda client, level: measure_variant(VARIANTS, client, url, args.deliveries, level),
        meta,
        args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
