"""回调客户端的连接池：每次投递花多少 CPU，几种池子在同一次运行里交替比。

    python -m benchmarks.callback_client [--deliveries 3000] [--concurrency 1,16,64] [--rounds 3]

真实的 CallbackClient（签名、SSRF 检查过的连接、重试包装都在）对一个 backend B 替身（127.0.0.1 上的
uvicorn，另一个进程：它的 CPU 不算进来）投递，只换连接池：
  httpcore-default：httpcore 连接池自己的默认（总共 10 个连接；2026-12-03 之前的回调副本）；
  httpcore-limits：httpcore 连接池 + 回调副本的连接上限（不限总数，保持 ≥ 100 个空闲连接）；
  linear：今天的 LinearConnectionPool（同样的上限，分连接那一步是线性的）。
另有三种只量连接池本身（不经 CallbackClient，直接 pool.request 同样的请求体，同样的上限）：
  pool-httpcore / pool-linear：同上；pool-httpcore2：OpenAI SDK 带进来的 httpx2 分支
  （pydantic/httpx2）的连接池，它修了平方的那一步——拿来比“换用它”与“留着自己的”差多少。
每档并发、每种池子交替跑 --rounds 轮，每轮先预热再计 --deliveries 次，取 CPU ms/投递的中位数。
日志不输出（loguru 的处理器先摘掉）：量的是连接池与 HTTP，不是写日志。
结果写到 benchmarks/results/callback-client-<时间>.json / .md / .png（--out-dir 改位置），
并更新同目录的 callback-client-latest.*。只访问 127.0.0.1。
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import httpcore
import httpcore2
import httpx
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
from serve_app.core.connection_pool import LinearConnectionPool
from serve_app.core.settings import CallbackPolicy
from serve_app.delivery.client import CallbackClient, _pool_limits
from serve_app.delivery.url_guard import CallbackTargetPolicy, guarded_transport
from tests.support.local_http import free_port
from tests.support.sample import failed_payload

TARGETS = CallbackTargetPolicy(allow_loopback=True)
POLICY = CallbackPolicy()


def _stock_pool(limits: httpx.Limits | None) -> Callable[[], httpx.AsyncHTTPTransport]:
    """今天的传输层，只把连接池换回 httpcore 自己的（同一个经 SSRF 检查的网络后端）。"""

    def build() -> httpx.AsyncHTTPTransport:
        transport = guarded_transport(TARGETS, limits)
        guarded = transport._pool
        options: dict[str, Any] = {}
        if limits is not None:
            options = {
                "max_connections": limits.max_connections,
                "max_keepalive_connections": limits.max_keepalive_connections,
                "keepalive_expiry": limits.keepalive_expiry,
            }
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=guarded._ssl_context, network_backend=guarded._network_backend, **options
        )
        return transport

    return build


def _via_client(
    build: Callable[[], httpx.AsyncHTTPTransport],
) -> Callable[[str], tuple[Send, Close]]:
    """经真实的 CallbackClient 投递（签名、SSRF 检查、重试包装都在）。"""

    def make(url: str) -> tuple[Send, Close]:
        client = CallbackClient(POLICY, TARGETS, transport=build())
        payload = failed_payload("t-bench")

        async def send() -> None:
            outcome = await client.deliver(url, payload)
            if not outcome.delivered:
                raise RuntimeError(f"投递失败 {outcome}")

        return send, client.aclose

    return make


def _via_pool(build: Callable[[], Any]) -> Callable[[str], tuple[Send, Close]]:
    """直接用连接池发同样的请求体：只量池子与 HTTP/1.1。"""

    def make(url: str) -> tuple[Send, Close]:
        pool = build()
        body = failed_payload("t-bench").model_dump_json().encode()

        async def send() -> None:
            response = await pool.request(
                "POST", url, content=body, headers={"Content-Type": "application/json"}
            )
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

        return send, pool.aclose

    return make


_LIMITS = _pool_limits(POLICY)


def _bare(pool_class: Any) -> Callable[[], Any]:
    """某个连接池类、回调副本的连接上限（httpcore 与 httpcore2 的构造参数相同）。"""
    return lambda: pool_class(
        max_connections=_LIMITS.max_connections,
        max_keepalive_connections=_LIMITS.max_keepalive_connections,
    )


VARIANTS: dict[str, Callable[[str], tuple[Send, Close]]] = {
    "httpcore-default": _via_client(_stock_pool(None)),
    "httpcore-limits": _via_client(_stock_pool(_LIMITS)),
    "linear": _via_client(lambda: guarded_transport(TARGETS, _LIMITS)),
    "pool-httpcore": _via_pool(_bare(httpcore.AsyncConnectionPool)),
    "pool-httpcore2": _via_pool(_bare(httpcore2.AsyncConnectionPool)),
    "pool-linear": _via_pool(_bare(LinearConnectionPool)),
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
    title="回调客户端的连接池",
    call="投递",
    key="pool",
    key_title="连接池",
    plot_call="delivery",
    panels=(
        ("CallbackClient (signing, SSRF-checked connections)", lambda n: "pool-" not in n),
        ("bare connection pool, same request", lambda n: n.startswith("pool-")),
    ),
)


def main(argv: list[str] | None = None) -> int:
    """各种连接池交替测，打印并保存结果。"""
    parser = client_parser(__doc__, "deliveries", "pools", VARIANTS)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0
    prepare_client_run(args.out_dir)
    pools = args.pools.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    meta = client_meta(
        args.deliveries, args.rounds, "bench-callback", argv, httpcore=httpcore.__version__
    )
    receiver = ["benchmarks.callback_client", "--serve", str(port)]
    run_client_benchmark(
        REPORT,
        (receiver, f"http://127.0.0.1:{port}/"),
        pools,
        levels,
        lambda pool, level: measure_variant(VARIANTS, pool, url, args.deliveries, level),
        meta,
        args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
