"""SQLite 账本的文件：版本化迁移、打开连接、行 → 记录。存储逻辑见 sqlite_store.py，
组提交见 group_commit.py。"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

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


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """把文件升级到 SCHEMA_VERSION；文件版本更新则报错并说明该怎么办。"""
    current = int(db.execute("PRAGMA user_version").fetchone()[0])
    if current > SCHEMA_VERSION:
        raise LedgerSchemaError(
            f"账本 {path} 的结构版本是 {current}，本程序只支持到 {SCHEMA_VERSION}："
            "请用更新的版本运行，或把 REPORTS_JOBS__LEDGER_PATH 指向另一个文件"
        )
    for version, script in MIGRATIONS:
        if version > current:
            # 脚本与版本号在同一个事务里：迁移到一半崩溃不会留下错的版本号
            db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
            )


def open_ledger_db(path: Path) -> sqlite3.Connection:
    """打开（必要时创建并迁移）账本文件：WAL + 每次提交落盘。"""
    path.parent.mkdir(parents=True, exist_ok=True)
    # 连接只在账本线程里使用；isolation_level=None：事务由组提交显式开关
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        # FULL：每次提交都 fsync，202 发出前作业已落盘（组提交让一次 fsync 覆盖一批作业）
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def record_from_row(row: sqlite3.Row) -> JobRecord:
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
