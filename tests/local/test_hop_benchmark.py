"""一跳的基准（make bench-hop）小规模跑通：本机 Ray 集群里各种一跳各量一轮，写出 JSON / 表 / 图；
孤立的一次（空闲之后）与一个接一个并排，另存一份。"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.hop import HOPS
from tests.support.benchmarks import run_benchmark


def test_hop_benchmark_measures_every_hop(tmp_path: Path) -> None:
    stdout = run_benchmark(
        "hop",
        *("--calls", "50", "--concurrency", "1", "--rounds", "1"),
        *("--idle-gap-ms", "5", "--idle-calls", "20"),
        *("--out-dir", str(tmp_path)),
    )
    (saved,) = tmp_path.glob("hop-2*.json")
    rows = json.loads(saved.read_text(encoding="utf-8"))["rows"]
    assert {r["hop"] for r in rows} == set(HOPS)
    # 每一跳两边都真的花了 CPU（被调方的 CPU 量的是 Echo 进程或 actor 进程，不是调用方自己）
    assert all(r["cpu_ms"] > 0 and r["callee_cpu_ms"] > 0 and r["per_s"] > 0 for r in rows)
    assert saved.with_suffix(".png").stat().st_size > 0
    assert "serve-grpc" in stdout and "被调方 CPU" in stdout

    # 孤立的一次：每种一跳都有一个接一个（0）与空闲 5 ms 之后两行，各 20 次往返
    (idle,) = tmp_path.glob("hop-idle-2*.json")
    idle_rows = json.loads(idle.read_text(encoding="utf-8"))["rows"]
    assert {(r["hop"], r["gap_ms"]) for r in idle_rows} == {(h, g) for h in HOPS for g in (0, 5)}
    assert all(r["calls"] == 20 and 0 < r["p50_ms"] <= r["p90_ms"] for r in idle_rows)
    assert idle.with_suffix(".png").stat().st_size > 0
    table = (tmp_path / "hop-idle-latest.md").read_text(encoding="utf-8")
    assert table.count("| serve-grpc |") == 1
    assert "每次前空闲 5 ms" in stdout
