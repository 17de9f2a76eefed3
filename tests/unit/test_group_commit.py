"""组提交：并发的单元合成一个事务；一个单元失败只回滚它自己；提交失败整批报错。"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from serve_app.ledger.group_commit import LedgerDatabase


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    return db


def _insert(key: str) -> Callable[[sqlite3.Connection], int]:
    def work(db: sqlite3.Connection) -> int:
        db.execute("INSERT INTO t VALUES (?)", (key,))
        return int(db.execute("SELECT COUNT(*) FROM t").fetchone()[0])

    return work


async def _keys(database: LedgerDatabase) -> set[str]:
    rows = await database.run(lambda db: db.execute("SELECT k FROM t").fetchall())
    return {r[0] for r in rows}


async def test_concurrent_units_share_transactions(tmp_path: Path) -> None:
    database = LedgerDatabase(lambda: _connect(tmp_path / "g.sqlite3"))
    try:
        counts = await asyncio.gather(*(database.run(_insert(f"k{i}")) for i in range(100)))
        # 单元按提交顺序执行：第 i 个看到 i+1 行
        assert counts == list(range(1, 101))
        # 第一个单个成批，其余在它执行时排队，合并成很少几批
        assert database.units == 100
        assert database.batches <= 5, database.batches
    finally:
        await database.close()


async def test_a_failing_unit_rolls_back_only_itself(tmp_path: Path) -> None:
    database = LedgerDatabase(lambda: _connect(tmp_path / "g.sqlite3"))

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES ('half')")
        raise ValueError("坏单元")

    try:
        results = await asyncio.gather(
            database.run(_insert("a")),
            database.run(half_then_fail),
            database.run(_insert("b")),
            return_exceptions=True,
        )
        assert results[0] == 1 and results[2] == 2
        assert isinstance(results[1], ValueError)
        assert await _keys(database) == {"a", "b"}
    finally:
        await database.close()


async def test_an_unopenable_file_fails_the_batch_and_recovers(tmp_path: Path) -> None:
    attempts: list[int] = []

    def connect() -> sqlite3.Connection:
        attempts.append(1)
        if len(attempts) == 1:
            raise sqlite3.OperationalError("磁盘暂不可用")
        return _connect(tmp_path / "g.sqlite3")

    database = LedgerDatabase(connect)
    try:
        with pytest.raises(sqlite3.OperationalError, match="磁盘暂不可用"):
            await database.run(_insert("a"))
        assert await database.run(_insert("b")) == 1
    finally:
        await database.close()


async def test_a_cancelled_caller_does_not_undo_its_committed_unit(tmp_path: Path) -> None:
    database = LedgerDatabase(lambda: _connect(tmp_path / "g.sqlite3"))
    try:
        blocker = asyncio.create_task(database.run(lambda db: db.execute("SELECT 1")))
        waiting = asyncio.create_task(database.run(_insert("kept")))
        await asyncio.sleep(0)
        waiting.cancel()
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await _keys(database) == {"kept"}
    finally:
        await database.close()


async def test_closed_database_reopens_on_next_use(tmp_path: Path) -> None:
    database = LedgerDatabase(lambda: _connect(tmp_path / "g.sqlite3"))
    await database.run(_insert("a"))
    await database.close()
    try:
        assert await _keys(database) == {"a"}
    finally:
        await database.close()
