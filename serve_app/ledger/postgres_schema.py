"""Postgres 账本的表结构：版本化迁移（多副本同时启动时由咨询锁串行）。存储逻辑见 postgres_store.py。

列与 SQLite 账本一一对应（行 → 记录共用 rows.record_from_row）；多一列 `version`：
除续租外的每次写入都把它加一，写入以“读到的版本未变”为条件（乐观并发），租约换了主人的写入因此落空。
"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from serve_app.ledger.store import LedgerSchemaError

# 结构迁移：(版本, 脚本)，按版本顺序执行；已执行的版本记在 ledger_schema 表
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE jobs (
    trace_id text PRIMARY KEY,
    version bigint NOT NULL DEFAULT 0,
    state text NOT NULL,
    job_json text NOT NULL,
    outcome_json text,
    history_json text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    produced_at double precision,
    owner text,
    lease_until double precision,
    runs integer NOT NULL DEFAULT 0,
    cancel_requested integer NOT NULL DEFAULT 0,
    cb_state text NOT NULL,
    cb_attempts integer NOT NULL DEFAULT 0,
    cb_rounds integer NOT NULL DEFAULT 0,
    cb_last_status integer,
    cb_last_error text,
    cb_delivered_at double precision,
    cb_next_attempt_at double precision,
    cb_first_failed_at double precision
);
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_due ON jobs (cb_state, cb_next_attempt_at);
CREATE INDEX jobs_produced ON jobs (produced_at);
CREATE TABLE idempotency (
    scope_key text PRIMARY KEY,
    body_hash text NOT NULL,
    trace_id text NOT NULL,
    created_at double precision NOT NULL
);
""",
    ),
    (
        2,
        """
-- 保留期清除按“已结束、最后更新时间”找行：部分索引只含回调已送达 / 已放弃的行
CREATE INDEX jobs_settled ON jobs (updated_at) WHERE cb_state IN ('delivered', 'undelivered');
CREATE INDEX idempotency_created ON idempotency (created_at);
""",
    ),
    (
        3,
        """
-- 调用方（作业归属与每个调用方的名额）：旧作业算 default
ALTER TABLE jobs ADD COLUMN caller text NOT NULL DEFAULT 'default';
CREATE INDEX jobs_caller ON jobs (caller, state);
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
# 迁移用的咨询锁号（任意固定值）：同一数据库上同时启动的副本依次迁移
_MIGRATION_LOCK = 0x5245504F


async def migrate(conn: AsyncConnection[DictRow]) -> None:
    """把数据库升级到 SCHEMA_VERSION（一个事务：迁移到一半失败不留半个结构）。"""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ledger_schema (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute(
            "SELECT coalesce(max(version), 0) AS version FROM ledger_schema"
        )
        row = await cursor.fetchone()
        current = int(row["version"]) if row is not None else 0
        if current > SCHEMA_VERSION:
            raise LedgerSchemaError(
                f"账本数据库的结构版本是 {current}，本程序只支持到 {SCHEMA_VERSION}："
                "请用更新的版本运行，或把 REPORTS_JOBS__LEDGER_URL 指向另一个数据库"
            )
        for version, script in MIGRATIONS:
            if version > current:
                await conn.execute(script.encode())
                await conn.execute("INSERT INTO ledger_schema (version) VALUES (%s)", (version,))
