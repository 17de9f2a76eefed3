"""控制面开销基准（make bench-overhead）小规模跑通对照组一路：零成本引擎与朴素实现都是真的进程，
一个接一个与孤立的请求（每份前空闲）各一档，写出 JSON / 表 / 图（流水线一路由 make bench-overhead
与 docs/performance.md 的数字覆盖，起整个 Ray 应用太慢，不放进这里）。"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from benchmarks.overhead import sample_ingress
from tests.support.benchmarks import process_title, run_benchmark, stop_midway


def test_overhead_benchmark_measures_back_to_back_and_lone_requests(tmp_path: Path) -> None:
    stdout = run_benchmark(
        "overhead",
        *("--systems", "seed", "--concurrency", "1", "--reports", "30"),
        *("--idle-gap-ms", "5", "--out-dir", str(tmp_path)),
    )
    (saved,) = tmp_path.glob("overhead-2*.json")
    runs = json.loads(saved.read_text(encoding="utf-8"))["runs"]
    assert [(r["system"], r["concurrency"], r["gap_ms"]) for r in runs] == [
        ("seed-baseline", 1, 0.0),
        ("seed-baseline", 1, 5.0),
    ]
    # 每份都收到了回调，延迟与 CPU 都是量出来的
    assert all(r["lost"] == 0 and r["late"] == 0 and r["e2e_p50_ms"] > 0 for r in runs)
    assert all(r["cpu_ms_per_report"]["seed-app"] > 0 for r in runs)
    table = (tmp_path / "overhead-latest.md").read_text(encoding="utf-8")
    assert "| seed-baseline | 1，每份前空闲 5 ms |" in table
    assert (tmp_path / "overhead-latest.png").stat().st_size > 0
    assert "C=1 idle 5ms" in stdout


def test_a_stopped_overhead_benchmark_stops_what_it_started(tmp_path: Path) -> None:
    """SIGTERM 只发给基准自己（不发进程组）：它照样停掉自己起的零成本引擎与对照组应用，不留孤儿进程
    （流水线一路同样经 finally 里的 local_run.sh stop 关掉 Ray 集群）。"""
    left = stop_midway(
        "overhead",
        *("--systems", "seed", "--concurrency", "8", "--reports", "10000000"),
        *("--idle-gap-ms", "0", "--out-dir", str(tmp_path)),
        started=lambda children: any("seed_baseline" in process_title(p) for p in children),
    )
    assert not left, f"基准停下后仍在的进程：{left}"
    assert not list(tmp_path.glob("overhead-*.json"))  # 没量完，不写结果


@pytest.mark.skipif(shutil.which("perf") is None, reason="没有 Debian 的 linux-perf")
def test_the_perf_profiler_summarises_a_live_process_by_library(tmp_path: Path) -> None:
    """--profiler perf：按 CPU 时钟采样一个真的忙着的 Python 进程，停下后写出按库、按符号的汇总。"""
    busy = subprocess.Popen([sys.executable, "-c", "while True: sum(range(10_000))"])
    try:
        process = psutil.Process(busy.pid)
        with sample_ingress([process], enabled=True, out_dir=tmp_path, tool="perf"):
            time.sleep(1.5)
    finally:
        busy.kill()
        busy.wait(timeout=10)
    summary = (tmp_path / "ingress-perf.txt").read_text(encoding="utf-8")
    assert "## 按 dso" in summary and "## 按 sym" in summary
    assert "libpython" in summary or "python" in summary.split("## 按 sym")[0]
    assert (tmp_path / "ingress-perf.data").stat().st_size > 0
