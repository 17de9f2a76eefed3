"""SQLite 账本的文件与连接：版本化迁移、单连接串行访问、行 → 记录。存储逻辑见 sqlite_store.py。"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from serve_app.ledger.records import CallbackState, CallbackStatus, JobRecord, JobState, StateChange
from serve_app.models.reports import CallbackPayload, ReportJob, webhook_id

# 结构迁移：(版本, 脚本)，按版本顺序执行，版本号记在 PRAGMA user_version。
# 版本 1 之前的文件没有版本号（user_version = 0），结构与版本 1 相同：IF NOT EXISTS 使它原样通过。
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE IF NOT EXISTS jobs (
    trace_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    job_json TEXT NOT NULL,
    outcome_json TEXT,
    history_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    produced_at REAL,
    owner TEXT,
    lease_until REAL,
    runs INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cb_state TEXT NOT NULL,
    cb_attempts INTEGER NOT NULL DEFAULT 0,
    cb_rounds INTEGER NOT NULL DEFAULT 0,
    cb_last_status INTEGER,
    cb_last_error TEXT,
    cb_delivered_at REAL,
    cb_next_attempt_at REAL,
    cb_first_failed_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(cb_state, cb_next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_produced ON jobs(produced_at);
CREATE TABLE IF NOT EXISTS idempotency (
    scope_key TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class LedgerSchemaError(RuntimeError):
    """账本文件的结构版本比本程序新：拒绝打开（旧程序不能改写新结构）。"""


def at(epoch: float) -> datetime:
    """epoch 秒 → UTC 时间。"""
    return datetime.fromtimestamp(epoch, UTC)


def maybe_at(epoch: float | None) -> datetime | None:
    """可空的 epoch 秒 → UTC 时间。"""
    return None if epoch is None else at(epoch)


async def migrate(db: aiosqlite.Connection, path: Path) -> None:
    """把文件升级到 SCHEMA_VERSION；文件版本更新则报错并说明该怎么办。"""
    async with db.execute("PRAGMA user_version") as cur:
        current = int((await cur.fetchone() or (0,))[0])
    if current > SCHEMA_VERSION:
        raise LedgerSchemaError(
            f"账本 {path} 的结构版本是 {current}，本程序只支持到 {SCHEMA_VERSION}："
            "请用更新的版本运行，或把 REPORTS_JOBS__LEDGER_PATH 指向另一个文件"
        )
    for version, script in MIGRATIONS:
        if version > current:
            # 脚本与版本号在同一个事务里：迁移到一半崩溃不会留下错的版本号
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
            )


async def open_ledger_db(path: Path) -> aiosqlite.Connection:
    """打开（必要时创建并迁移）账本文件：WAL + 每次提交落盘。"""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = aiosqlite.connect(path, isolation_level=None)
    # aiosqlite 的工作线程默认非守护：忘了 close 时会卡住进程退出。
    # 设为守护线程：已提交的事务在 WAL 里，进程退出不会丢
    connection.daemon = True
    db = await connection
    try:
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        # FULL：每次提交都 fsync，202 发出前作业已落盘
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        await migrate(db, path)
    except BaseException:
        await db.close()
        raise
    return db


class LedgerDatabase:
    """一个账本文件的单连接：第一次使用时打开（副本 __init__ 是同步的），事务与读取都串行。"""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()
        # 单连接：事务不能交错，所有访问串行
        self._lock = asyncio.Lock()

    async def _connection(self) -> aiosqlite.Connection:
        async with self._open_lock:
            if self._db is None:
                self._db = await open_ledger_db(self._path)
            return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """写事务（BEGIN IMMEDIATE）：正常退出提交，异常回滚。"""
        db = await self._connection()
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def fetch_all(self, query: str, params: tuple[object, ...]) -> list[aiosqlite.Row]:
        """只读查询的全部行。"""
        db = await self._connection()
        async with self._lock, db.execute(query, params) as cur:
            return list(await cur.fetchall())

    async def close(self) -> None:
        """关闭连接（之后再用会重新打开）。"""
        async with self._open_lock:
            if self._db is not None:
                await self._db.close()
                self._db = None


def record_from_row(row: aiosqlite.Row) -> JobRecord:
    """jobs 表的一行 → JobRecord。"""
    outcome = row["outcome_json"]
    return JobRecord(
        job=ReportJob.model_validate_json(row["job_json"]),
        state=JobState(row["state"]),
        updated_at=at(row["updated_at"]),
        outcome=CallbackPayload.model_validate_json(outcome) if outcome else None,
        cancel_requested=bool(row["cancel_requested"]),
        runs=row["runs"],
        callback=CallbackStatus(
            state=CallbackState(row["cb_state"]),
            attempts=row["cb_attempts"],
            delivered_at=maybe_at(row["cb_delivered_at"]),
            last_status_code=row["cb_last_status"],
            last_error=row["cb_last_error"],
            next_attempt_at=maybe_at(row["cb_next_attempt_at"]),
            webhook_id=webhook_id(row["trace_id"]),
        ),
        history=[StateChange.model_validate(h) for h in json.loads(row["history_json"])],
    )
