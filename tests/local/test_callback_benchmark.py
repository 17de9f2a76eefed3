"""回调客户端基准（make bench-callback）小规模跑通：各种客户端、两档并发，写出 JSON / 表 / 图。"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.benchmarks import run_benchmark


def test_callback_benchmark_measures_every_client_at_every_level(tmp_path: Path) -> None:
    stdout = run_benchmark(
        "callback_client",
        *("--deliveries", "50", "--concurrency", "1,8", "--rounds", "1"),
        *("--out-dir", str(tmp_path)),
    )
    (saved,) = tmp_path.glob("callback-client-2*.json")
    rows = json.loads(saved.read_text(encoding="utf-8"))["rows"]
    measured = {(r["concurrency"], r["client"]) for r in rows}
    clients = {"client", "aiohttp", "httpx", "httpx2"}
    assert measured == {(c, name) for c in (1, 8) for name in clients}
    assert all(r["cpu_ms"] > 0 and r["per_s"] > 0 for r in rows)
    assert saved.with_suffix(".png").stat().st_size > 0
    assert "httpx2" in stdout
