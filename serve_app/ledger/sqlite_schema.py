"""SQLite 账本的文件：版本化迁移、打开连接。存储逻辑见 sqlite_store.py，组提交见 group_commit.py，
行 → 记录见 rows.py。"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from serve_app.ledger.store import LedgerSchemaError

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
    (
        2,
        """
-- 保留期清除按“已结束、最后更新时间”找行：部分索引只含回调已送达 / 已放弃的行
CREATE INDEX IF NOT EXISTS jobs_settled ON jobs(updated_at)
    WHERE cb_state IN ('delivered', 'undelivered');
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency(created_at);
""",
    ),
    (
        3,
        """
-- 调用方（作业归属与每个调用方的名额）：旧作业算 default
ALTER TABLE jobs ADD COLUMN caller TEXT NOT NULL DEFAULT 'default';
CREATE INDEX IF NOT EXISTS jobs_caller ON jobs(caller, state);
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


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
