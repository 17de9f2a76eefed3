"""账本基准（make bench-ledger）小规模跑通：两种存储、两种事件循环、多个客户端进程，写出 JSON。"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.benchmarks import run_benchmark
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
