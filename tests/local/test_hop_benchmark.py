"""一跳的基准（make bench-hop）小规模跑通：本机 Ray 集群里四种一跳各量一轮，写出 JSON / 表 / 图。"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.hop import HOPS
from tests.support.benchmarks import run_benchmark


def test_hop_benchmark_measures_every_hop(tmp_path: Path) -> None:
    stdout = run_benchmark(
        "hop",
        *("--calls", "50", "--concurrency", "1", "--rounds", "1"),
        *("--out-dir", str(tmp_path)),
    )
    (saved,) = tmp_path.glob("hop-2*.json")
    rows = json.loads(saved.read_text(encoding="utf-8"))["rows"]
    assert {r["hop"] for r in rows} == set(HOPS)
    # 每一跳两边都真的花了 CPU（被调方的 CPU 量的是 Echo 进程或 actor 进程，不是调用方自己）
    assert all(r["cpu_ms"] > 0 and r["callee_cpu_ms"] > 0 and r["per_s"] > 0 for r in rows)
    assert saved.with_suffix(".png").stat().st_size > 0
    assert "serve-grpc" in stdout and "被调方 CPU" in stdout
