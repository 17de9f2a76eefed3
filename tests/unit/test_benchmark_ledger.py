"""基准每次起应用用一个新的 SQLite 账本：不接着上一次的作业，不碰 make run 的账本。"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from benchmarks.common import fresh_ledger
from serve_app.core.settings import PROJECT_ROOT, JobPolicy


def test_a_fresh_ledger_drops_the_last_runs_jobs_and_is_not_make_runs(tmp_path: Path) -> None:
    path = tmp_path / "ledger-overhead.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE jobs (trace_id TEXT)")
        db.execute("INSERT INTO jobs VALUES ('上一次的作业')")
    leftovers = [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]
    for extra in leftovers[1:]:
        extra.touch()
    assert fresh_ledger(path.name, tmp_path) == path
    assert not any(p.exists() for p in leftovers)
    # 默认目录是基准自己的 .run/bench，不是 make run 的账本
    default = fresh_ledger("ledger-probe.sqlite3")
    assert default.parent.name == "bench"
    assert default != PROJECT_ROOT / JobPolicy.model_fields["ledger_path"].default
