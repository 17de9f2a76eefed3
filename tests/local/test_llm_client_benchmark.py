"""外部模式 LLM 客户端基准（make bench-llm-client）小规模跑通：每种写法、两档并发，写出结果文件。"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.llm_client import VARIANTS
from tests.support.benchmarks import run_benchmark


def test_llm_client_benchmark_measures_every_client_at_every_level(tmp_path: Path) -> None:
    stdout = run_benchmark(
        "llm_client",
        *("--requests", "40", "--concurrency", "1,8", "--rounds", "1"),
        *("--out-dir", str(tmp_path)),
    )
    (saved,) = tmp_path.glob("llm-client-2*.json")
    rows = json.loads(saved.read_text(encoding="utf-8"))["rows"]
    assert {(r["concurrency"], r["client"]) for r in rows} == {
        (c, name) for c in (1, 8) for name in VARIANTS
    }
    assert all(r["cpu_ms"] > 0 and r["per_s"] > 0 for r in rows)
    assert saved.with_suffix(".png").stat().st_size > 0
    assert "today" in stdout
