"""Postgres 账本的批量语句：一条语句插入一批作业、一条语句按版本条件写一批行（unnest 数组参数）。

只管 SQL 与参数；写什么由 decisions.py 判定，何时合批由 postgres_store.py 决定。
数组参数用二进制格式（%b）：文本格式要逐个元素转义。
"""

from __future__ import annotations

import functools
from typing import Any, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from serve_app.ledger.rows import new_job_columns
from serve_app.models.reports import ReportJob

Conn = AsyncConnection[DictRow]

# jobs 表各列在 unnest 里的数组类型（与 postgres_schema 的建表一致；version 由条件写自己管）
COLUMN_TYPES: dict[str, str] = {
    "trace_id": "text",
    "state": "text",
    "job_json": "text",
    "history_json": "text",
    "outcome_json": "text",
    "created_at": "float8",
    "updated_at": "float8",
    "produced_at": "float8",
    "owner": "text",
    "lease_until": "float8",
    "runs": "int4",
    "cancel_requested": "int4",
    "cb_state": "text",
    "cb_attempts": "int4",
    "cb_rounds": "int4",
    "cb_last_status": "int4",
    "cb_last_error": "text",
    "cb_delivered_at": "float8",
    "cb_next_attempt_at": "float8",
    "cb_first_failed_at": "float8",
    "caller": "text",
}


@functools.cache
def _update_query(names: tuple[str, ...], partial: tuple[str, ...]) -> bytes:
    """批量条件写：只写这一批改动到的列（按列组合一次）；每行以读到的 version 为条件，落空的行
    不在 RETURNING 里。partial：只有部分行改动的列，没改它的行保留库里的当前值（而不是写回读到的
    旧值：续租只改 lease_until、不加 version，读到的 lease_until 可能已经旧了）。"""
    assignments = [
        f"{name} = CASE WHEN v.set_{name} THEN v.{name} ELSE j.{name} END"
        if name in partial
        else f"{name} = v.{name}"
        for name in names
    ]
    arrays = [f"%b::{COLUMN_TYPES[name]}[]" for name in names] + ["%b::bool[]"] * len(partial)
    return (
        "UPDATE jobs AS j SET "
        + ", ".join(assignments)
        + ", version = j.version + 1 FROM unnest(%b::text[], %b::int8[], "
        + ", ".join(arrays)
        + ") AS v(trace_id, version, "
        + ", ".join([*names, *(f"set_{name}" for name in partial)])
        + ") WHERE j.trace_id = v.trace_id AND j.version = v.version RETURNING j.trace_id"
    ).encode()


async def batch_update(
    conn: Conn, writes: list[tuple[DictRow, dict[str, Any]]]
) -> dict[str, DictRow]:
    """一条语句写一批行（各自以读到的 version 为条件）；返回写成的行。

    只发这一批改动到的列，只取回写成的 trace_id：写成的行就是读到的行加上这些改动、version 加一
    （没改的列库里保持原值），不必把整行（报告正文、作业 JSON）再从库里传回来。
    """
    names = tuple(sorted({name for _, changes in writes for name in changes}))
    partial = tuple(n for n in names if not all(n in changes for _, changes in writes))
    params = [
        [row["trace_id"] for row, _ in writes],
        [row["version"] for row, _ in writes],
        *([changes.get(name) for _, changes in writes] for name in names),
        *([name in changes for _, changes in writes] for name in partial),
    ]
    cursor = await conn.execute(_update_query(names, partial), params)
    done = {written["trace_id"] for written in await cursor.fetchall()}
    return {
        row["trace_id"]: cast(DictRow, row | changes | {"version": row["version"] + 1})
        for row, changes in writes
        if row["trace_id"] in done
    }


@functools.cache
def _insert_query(names: tuple[str, ...]) -> bytes:
    arrays = ", ".join(f"%b::{COLUMN_TYPES[name]}[]" for name in names)
    columns = ", ".join(names)
    return (
        f"INSERT INTO jobs ({columns}) SELECT * FROM unnest({arrays})"
        " ON CONFLICT (trace_id) DO NOTHING RETURNING *"
    ).encode()


async def batch_insert(
    conn: Conn, now: float, admits: list[tuple[ReportJob, str]], lease_until: float
) -> dict[str, DictRow]:
    """一条语句插入一批新作业 (作业, owner)（列见 rows.new_job_columns；已存在的跳过）；
    返回插进去的行。"""
    if not admits:
        return {}
    rows = [new_job_columns(job, owner, now, lease_until) for job, owner in admits]
    names = tuple(rows[0])
    params = [[row[name] for row in rows] for name in names]
    cursor = await conn.execute(_insert_query(names), params)
    return {row["trace_id"]: row for row in await cursor.fetchall()}
