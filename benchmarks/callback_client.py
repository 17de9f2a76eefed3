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
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpcore
import httpcore2
import httpx
import uvicorn
from loguru import logger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.common import NICE, RESULTS, publish_latest
from serve_app.core.connection_pool import LinearConnectionPool
from serve_app.core.settings import CallbackPolicy
from serve_app.delivery.client import CallbackClient, _pool_limits
from serve_app.delivery.url_guard import CallbackTargetPolicy, guarded_transport
from tests.support.local_http import free_port, wait_http_ok
from tests.support.sample import failed_payload

TARGETS = CallbackTargetPolicy(allow_loopback=True)
POLICY = CallbackPolicy()
WARMUP = 200


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


Send = Callable[[], Awaitable[None]]
Close = Callable[[], Awaitable[None]]


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


async def _measure(variant: str, url: str, deliveries: int, concurrency: int) -> dict[str, float]:
    """一轮：预热后计 deliveries 次投递的本进程 CPU 与墙钟。"""
    send, close = VARIANTS[variant](url)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await send()

    try:
        await asyncio.gather(*(one() for _ in range(WARMUP)))
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(deliveries)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await close()
    return {"cpu_ms": cpu / deliveries * 1000, "per_s": deliveries / wall}


def _write(rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base = out_dir / f"callback-client-{stamp}"
    base.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "rows": rows}, ensure_ascii=False, indent=2) + "\n",
        encoding="utf-8",
    )
    lines = [
        f"# 回调客户端的连接池（{stamp}，每档 {meta['deliveries']} 次投递 × "
        f"{meta['rounds']} 轮，中位数）",
        "",
        f"命令：`{meta['command']}`",
        "",
        "| 并发 | 连接池 | CPU ms/投递 | 投递/秒 | 各轮 CPU ms |",
        "| ---: | --- | ---: | ---: | --- |",
        *(
            f"| {r['concurrency']} | {r['pool']} | {r['cpu_ms']:.3f} | {r['per_s']:.0f} "
            f"| {' / '.join(f'{x:.3f}' for x in r['rounds_cpu_ms'])} |"
            for r in rows
        ),
        "",
    ]
    base.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    _plot(rows, base.with_suffix(".png"))
    publish_latest("callback-client", stamp, out_dir)
    sys.stdout.write("\n".join(lines) + "\n")
    return base.with_suffix(".json")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["concurrency"] for r in rows})
    names = list(dict.fromkeys(r["pool"] for r in rows))
    panels = [
        (
            "CallbackClient (signing, SSRF-checked connections)",
            [n for n in names if "pool-" not in n],
        ),
        ("bare connection pool, same request", [n for n in names if n.startswith("pool-")]),
    ]
    panels = [(title, group) for title, group in panels if group]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    top = max(r["cpu_ms"] for r in rows) * 1.3
    for ax, (title, group) in zip(axes[0], panels, strict=True):
        width = 0.8 / len(group)
        for i, name in enumerate(group):
            values = {r["concurrency"]: r for r in rows if r["pool"] == name}
            xs = [j + (i - (len(group) - 1) / 2) * width for j in range(len(levels))]
            heights = [values[c]["cpu_ms"] for c in levels]
            ax.bar(xs, heights, width=width, label=name)
            for x, c, h in zip(xs, levels, heights, strict=True):
                label = f"{h:.2f}\n{values[c]['per_s']:.0f}/s"
                ax.text(x, h, label, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(levels)), [f"concurrency {c}" for c in levels])
        ax.set_ylabel("client CPU ms per delivery (lower is better)")
        ax.set_ylim(0, top)
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """各种连接池交替测，打印并保存结果。"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pools", default=",".join(VARIANTS), help="逗号分隔，取自 " + "、".join(VARIANTS)
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0
    logger.remove()
    os.nice(NICE)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pools = args.pools.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.callback_client", "--serve", str(port)]
    )
    samples: dict[tuple[int, str], list[dict[str, float]]] = {}
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/", timeout_s=60)
        url = f"http://127.0.0.1:{port}/hook"
        for level in levels:
            for round_ in range(args.rounds):
                for pool in pools:
                    result = asyncio.run(_measure(pool, url, args.deliveries, level))
                    samples.setdefault((level, pool), []).append(result)
                    sys.stdout.write(
                        f"并发 {level:>3} 第 {round_ + 1} 轮 {pool:<17} "
                        f"{result['cpu_ms']:.3f} ms CPU/投递  {result['per_s']:.0f}/s\n"
                    )
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
    rows = [
        {
            "concurrency": level,
            "pool": pool,
            "cpu_ms": statistics.median(s["cpu_ms"] for s in runs),
            "per_s": statistics.median(s["per_s"] for s in runs),
            "rounds_cpu_ms": [s["cpu_ms"] for s in runs],
        }
        for (level, pool), runs in samples.items()
    ]
    extra = argv if argv is not None else sys.argv[1:]
    meta = {
        "deliveries": args.deliveries,
        "rounds": args.rounds,
        "command": "make bench-callback" + (f' ARGS="{" ".join(extra)}"' if extra else ""),
        "machine": f"{os.cpu_count()} 核",
        "httpcore": httpcore.__version__,
    }
    _write(rows, meta, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
