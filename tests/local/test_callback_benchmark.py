"""回调客户端基准（make bench-callback）小规模跑通：三种连接池、两档并发，写出 JSON / 表 / 图。"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from serve_app.core.settings import PROJECT_ROOT


def test_callback_benchmark_measures_every_pool_at_every_level(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.callback_client",
            *("--deliveries", "50", "--concurrency", "1,8", "--rounds", "1"),
            *("--out-dir", str(tmp_path)),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (saved,) = tmp_path.glob("callback-client-2*.json")
    rows = json.loads(saved.read_text(encoding="utf-8"))["rows"]
    measured = {(r["concurrency"], r["pool"]) for r in rows}
    pools = {"httpcore-default", "httpcore-limits", "linear"}
    assert measured == {(c, p) for c in (1, 8) for p in pools}
    assert all(r["cpu_ms"] > 0 and r["per_s"] > 0 for r in rows)
    assert saved.with_suffix(".png").stat().st_size > 0
    assert "linear" in result.stdout
