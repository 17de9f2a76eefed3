"""账本基准（make bench-ledger）小规模跑通：两种存储、两种事件循环、多个客户端进程，写出 JSON。"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.benchmarks import process_title, run_benchmark, stop_midway
from tests.support.postgres import PostgresServer


def test_ledger_benchmark_runs_every_store_loop_and_process_count(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    stdout = run_benchmark(
        "ledger",
        *("--jobs", "40", "--concurrency", "8"),
        *("--postgres-url", postgres_server.create_database()),
        *("--pg-processes", "1", "2", "--loops", "uvloop", "asyncio"),
        *("--out-dir", str(tmp_path)),
    )
    (saved,) = tmp_path.glob("ledger-*.json")
    results = json.loads(saved.read_text(encoding="utf-8"))
    expected = {
        "sqlite uvloop",
        "sqlite asyncio",
        "postgres×1 uvloop",
        "postgres×2 uvloop",
        "postgres×1 asyncio",
        "postgres×2 asyncio",
    }
    assert expected <= results.keys()
    for name in expected:
        assert results[name]["jobs"] == 40 and results[name]["jobs_per_s"] > 0
        assert name in stdout


def test_a_stopped_ledger_benchmark_stops_the_postgres_it_started(tmp_path: Path) -> None:
    """SIGTERM 只发给基准自己：它照样停掉自己临时起的 Postgres（连同各客户端进程），不留孤儿。"""
    left = stop_midway(
        "ledger",
        *("--store", "postgres", "--jobs", "10000000", "--pg-processes", "1"),
        *("--out-dir", str(tmp_path)),
        started=lambda children: sum("postgres" in process_title(p) for p in children) > 1,
    )
    assert not left, f"基准停下后仍在的进程：{left}"
