"""基准：账本单独能承受的作业吞吐，SQLite（组提交）与 Postgres（真实服务器）在同一次运行里并排。

    python -m benchmarks.ledger [--jobs 2000] [--concurrency 64] [--store sqlite postgres]
                                [--postgres-url postgresql://…]

每个作业：admit → advance(rendering) → advance(generating) → finish → record_delivery，
与真实流水线对账本的写入相同（续租与扫描另计）。打印 jobs/s 与 admit 的 p50/p99 延迟，
结果写到 .run/bench/ledger-<时间>.json。SQLite 文件放在临时目录；Postgres 默认在本机临时起一个
（Debian 的 postgresql 包，数据目录在临时目录，只听 127.0.0.1，fsync 与 synchronous_commit
都是默认的开），
也可用 --postgres-url 指向已有的库（会在里面建表）。
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from serve_app.core.settings import PROJECT_ROOT, JobPolicy
from serve_app.ledger.postgres_store import PostgresJobStore
from serve_app.ledger.records import JobState
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

OWNER = "bench"
DELIVERED = DeliveryOutcome(delivered=True, attempts=1, status_code=200)
REPORT = Completion(
    content="x" * 2000,
    model="bench",
    finish_reason="stop",
    usage=Usage(prompt_tokens=300, completion_tokens=500),
)


async def _one(store: JobStore, index: int, admit_ms: list[float]) -> None:
    job = ReportJob(
        trace_id=f"bench-{index}",
        report_type="sales_weekly",
        inputs={"period": "本周", "region": "华东", "sales_data": "销售额 320 万元" * 20},
        length="short",
        callback_url="http://127.0.0.1:9/hook",
        created_at=utc_now(),
    )
    started = time.perf_counter()
    await store.admit(job, OWNER, None)
    admit_ms.append((time.perf_counter() - started) * 1000)
    await store.advance(job.trace_id, OWNER, JobState.RENDERING)
    await store.advance(job.trace_id, OWNER, JobState.GENERATING)
    await store.finish(job.trace_id, OWNER, CallbackPayload.succeeded(job, REPORT))
    await store.record_delivery(job.trace_id, OWNER, DELIVERED)


async def _run(store: JobStore, jobs: int, concurrency: int) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    admit_ms: list[float] = []

    async def gated(index: int) -> None:
        async with gate:
            await _one(store, index, admit_ms)

    try:
        await _one(store, -1, [])  # 打开连接、建表，不计时
        started = time.perf_counter()
        await asyncio.gather(*(gated(i) for i in range(jobs)))
        seconds = time.perf_counter() - started
        extra: dict[str, float] = {}
        if isinstance(store, SqliteJobStore):
            # 组提交：平均每个事务（一次 fsync）合并的操作数
            batches, units = store.database.batches, store.database.units
            extra = {"commits": batches, "ops_per_commit": units / max(batches, 1)}
    finally:
        await store.close()
    quantiles = statistics.quantiles(admit_ms, n=100)
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "admit_p50_ms": quantiles[49],
        "admit_p99_ms": quantiles[98],
        **extra,
    }


async def _bench(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    policy = JobPolicy(max_active_jobs=args.jobs + 2)
    if kind == "sqlite":
        return await _run(
            SqliteJobStore(tmp / "ledger.sqlite3", policy), args.jobs, args.concurrency
        )
    if args.postgres_url:
        store = PostgresJobStore(args.postgres_url, policy, pool_size=args.pool_size)
        return await _run(store, args.jobs, args.concurrency)
    from tests.support.postgres import PostgresServer  # 只在本机临时起服务器时需要

    server = PostgresServer().start()
    try:
        store = PostgresJobStore(server.create_database(), policy, pool_size=args.pool_size)
        return await _run(store, args.jobs, args.concurrency)
    finally:
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
    parser.add_argument("--pool-size", type=int, default=20, help="Postgres 连接池大小")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.store:
            results[kind] = asyncio.run(_bench(kind, args, Path(tmp)))
    out_dir = PROJECT_ROOT / ".run" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"ledger-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps({"when": datetime.now(UTC).isoformat(), **results}, indent=2))
    for kind, result in results.items():
        sys.stdout.write(
            f"{kind:8s} 账本：{result['jobs_per_s']:.0f} 个作业/秒"
            f"（完整生命周期，{args.jobs} 个，并发 {args.concurrency}），"
            f"admit p50 {result['admit_p50_ms']:.1f} ms、p99 {result['admit_p99_ms']:.1f} ms\n"
        )
    sys.stdout.write(f"结果：{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
