"""基准：账本单独能承受的作业吞吐，SQLite（组提交）与 Postgres（真实服务器）在同一次运行里并排。

    python -m benchmarks.ledger [--jobs 2000] [--concurrency 64] [--store sqlite postgres]
                                [--postgres-url postgresql://…] [--pg-processes 1 2]

每个作业：admit → advance(generating，rendering 途经一起记) → finish → record_delivery，
与真实流水线在渲染很快、生成超过 0.5 秒（真实引擎上几乎总是）时对账本的写入相同（续租与扫描
另计；渲染慢时多一次 advance(rendering)，生成也很快时没有这次 advance、途经的随 finish 记）。
打印 jobs/s 与 admit 的 p50/p99 延迟，
结果写到 .run/bench/ledger-<时间>.json。SQLite 文件放在临时目录；Postgres 默认在本机临时起一个
（Debian 的 postgresql 包，数据目录在临时目录，只听 127.0.0.1，fsync 与 synchronous_commit
都是默认的开），
也可用 --postgres-url 指向已有的库（会在里面建表）。

`--pg-processes 1 2`：Postgres 另按 N 个客户端进程各测一次（每个进程一个连接池、一个事件循环，
就像 N 个入口副本同时写一个库；作业与并发平分，N 个进程在同一时刻开始）。
SQLite 账本只能有一个写者，不测多进程。

`--loops uvloop asyncio`：每种事件循环各测一次（默认只测 uvloop：Ray 的 actor，包括 Serve 的入口与
账本副本，装了 uvloop 就用它跑事件循环；asyncio 是标准库的循环，用来对照）。
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.common import exit_on_sigterm
from serve_app.core.settings import PROJECT_ROOT, JobPolicy
from serve_app.ledger.postgres_store import PostgresJobStore
from serve_app.ledger.records import JobState, StateChange
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.ledger.store import JobStore
from serve_app.models.reports import (
    CallbackPayload,
    Completion,
    DeliveryOutcome,
    ReportJob,
    Usage,
    utc_now,
)

# 事件循环：uvloop 与 Ray 副本里的相同（RAY_USE_UVLOOP 默认开），asyncio 是标准库的
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
OWNER = "bench"
DELIVERED = DeliveryOutcome(delivered=True, attempts=1, status_code=200)
REPORT = Completion(
    content="x" * 2000,
    model="bench",
    finish_reason="stop",
    usage=Usage(prompt_tokens=300, completion_tokens=500),
)


async def _one(store: JobStore, index: int, admit_ms: list[float], prefix: str = "bench") -> None:
    job = ReportJob(
        trace_id=f"{prefix}-{index}",
        report_type="sales_weekly",
        inputs={"period": "本周", "region": "华东", "sales_data": "销售额 320 万元" * 20},
        length="short",
        callback_url="http://127.0.0.1:9/hook",
        created_at=utc_now(),
    )
    started = time.perf_counter()
    await store.admit(job, OWNER, None)
    admit_ms.append((time.perf_counter() - started) * 1000)
    rendering = StateChange(state=JobState.RENDERING, at=utc_now())
    await store.advance(job.trace_id, OWNER, JobState.GENERATING, (rendering,))
    await store.finish(job.trace_id, OWNER, CallbackPayload.succeeded(job, REPORT))
    await store.record_delivery(job.trace_id, OWNER, DELIVERED)


async def _drive(
    store: JobStore, jobs: int, concurrency: int, prefix: str, barrier: Barrier | None
) -> dict[str, Any]:
    """跑 jobs 个完整生命周期；返回起止时刻（墙钟）与 admit 延迟。barrier：多进程时一起开始。"""
    gate = asyncio.Semaphore(concurrency)
    admit_ms: list[float] = []

    async def gated(index: int) -> None:
        async with gate:
            await _one(store, index, admit_ms, prefix)

    try:
        await _one(store, -1, [], prefix)  # 打开连接、建表，不计时
        if barrier is not None:
            await asyncio.to_thread(barrier.wait, 120)
        began = time.time()
        await asyncio.gather(*(gated(i) for i in range(jobs)))
        ended = time.time()
        extra: dict[str, float] = {}
        if isinstance(store, SqliteJobStore):
            # 组提交：平均每个事务（一次 fsync）合并的操作数
            batches, units = store.database.batches, store.database.units
            extra = {"commits": batches, "ops_per_commit": units / max(batches, 1)}
    finally:
        await store.close()
    return {"began": began, "ended": ended, "admit_ms": admit_ms, **extra}


def _summary(
    runs: list[dict[str, Any]], jobs: int, concurrency: int, processes: int
) -> dict[str, float]:
    """合并各进程的结果：吞吐按最早开始到最晚结束算。"""
    seconds = max(r["ended"] for r in runs) - min(r["began"] for r in runs)
    admit_ms = [ms for r in runs for ms in r["admit_ms"]]
    quantiles = statistics.quantiles(admit_ms, n=100)
    extra = {k: v for r in runs for k, v in r.items() if k in ("commits", "ops_per_commit")}
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "processes": processes,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "admit_p50_ms": quantiles[49],
        "admit_p99_ms": quantiles[98],
        **extra,
    }


def _run_on[T](loop: str, main: Coroutine[Any, Any, T]) -> T:
    """在指定的事件循环上跑完 main。"""
    return asyncio.run(main, loop_factory=LOOPS[loop])


def _pg_process(
    loop: str,
    url: str,
    pool_size: int,
    jobs: int,
    concurrency: int,
    prefix: str,
    barrier: Barrier,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """多进程时的一个客户端进程：自己的连接池与事件循环。"""
    store = PostgresJobStore(url, JobPolicy(max_active_jobs=jobs + 2), pool_size=pool_size)
    results.put(_run_on(loop, _drive(store, jobs, concurrency, prefix, barrier)))


def _pg_processes(
    loop: str, url: str, args: argparse.Namespace, processes: int
) -> dict[str, float]:
    """N 个客户端进程同时写一个库（spawn：子进程不继承父进程的事件循环与连接）。"""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    workers = [
        context.Process(
            target=_pg_process,
            args=(
                loop,
                url,
                max(args.pool_size // processes, 2),
                args.jobs // processes,
                max(args.concurrency // processes, 1),
                f"bench-{loop}-p{processes}-{index}",
                barrier,
                results,
            ),
        )
        for index in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        runs = [results.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
    finally:
        # 被打断（SIGTERM、超时）时客户端进程还在写：先停掉它们，否则退出时 multiprocessing 要等它们
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=10)
    return _summary(runs, args.jobs // processes * processes, args.concurrency, processes)


def _bench(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float]]:
    """一种存储的结果，每个事件循环一组：SQLite 一行；Postgres 按 --pg-processes 每个进程数一行。"""
    if kind == "sqlite":
        results: dict[str, dict[str, float]] = {}
        for loop in args.loops:
            policy = JobPolicy(max_active_jobs=args.jobs + 2)
            store = SqliteJobStore(tmp / f"ledger-{loop}.sqlite3", policy)
            run = _run_on(loop, _drive(store, args.jobs, args.concurrency, "bench", None))
            results[f"sqlite {loop}"] = _summary([run], args.jobs, args.concurrency, 1)
        return results
    server = None
    if args.postgres_url:
        url = args.postgres_url
    else:
        from tests.support.postgres import PostgresServer  # 只在本机临时起服务器时需要

        server = PostgresServer().start()
        url = server.create_database()
    try:
        return {
            f"postgres×{n} {loop}": _pg_processes(loop, url, args, n)
            for loop in args.loops
            for n in args.pg_processes
        }
    finally:
        if server is not None:
            server.cleanup()


def main(argv: list[str] | None = None) -> int:
    """运行并输出结果（每种存储一行）。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--store", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"]
    )
    parser.add_argument("--postgres-url", help="用已有的 Postgres（默认在本机临时起一个）")
    parser.add_argument(
        "--pool-size", type=int, default=20, help="Postgres 连接池大小（各进程平分）"
    )
    parser.add_argument(
        "--pg-processes",
        type=int,
        nargs="+",
        default=[1, 2],
        help="Postgres 的客户端进程数（每个各测一次）",
    )
    parser.add_argument(
        "--loops",
        nargs="+",
        choices=sorted(LOOPS),
        default=["uvloop"],
        help="事件循环（每个各测一次；默认 uvloop，与 Ray 副本相同）",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=PROJECT_ROOT / ".run" / "bench",
        help="结果 JSON 写到这里",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.store:
            results |= _bench(kind, args, Path(tmp))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"ledger-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps({"when": datetime.now(UTC).isoformat(), **results}, indent=2))
    for kind, result in results.items():
        sys.stdout.write(
            f"{kind:18s} 账本：{result['jobs_per_s']:.0f} 个作业/秒"
            f"（完整生命周期，{result['jobs']:.0f} 个，并发 {args.concurrency}，"
            f"{result['processes']:.0f} 个客户端进程），"
            f"admit p50 {result['admit_p50_ms']:.1f} ms、p99 {result['admit_p99_ms']:.1f} ms\n"
        )
    sys.stdout.write(f"结果：{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
