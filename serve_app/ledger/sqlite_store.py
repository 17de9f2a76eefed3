"""SQLite（WAL）账本：单个 Ledger 副本独占一个文件；每个操作是账本线程里的一个同步单元，
并发的操作组提交（见 sqlite_schema.LedgerDatabase）。"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from serve_app.core.settings import JobPolicy
from serve_app.ledger import rules
from serve_app.ledger.decisions import Decisions, heartbeat_reply, replay_decision
from serve_app.ledger.group_commit import LedgerDatabase
from serve_app.ledger.records import (
    PRODUCING_STATES,
    Admission,
    CallbackState,
    CancelResult,
    JobRecord,
    JobState,
    StateChange,
    WorkItem,
)
from serve_app.ledger.rows import COUNTS_SQL, new_job_columns, record_from_row
from serve_app.ledger.rules import AdvanceResult
from serve_app.ledger.sqlite_schema import open_ledger_db
from serve_app.ledger.store import HeartbeatReply, IdempotencyKey, LedgerCounts
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

_PRODUCING = tuple(str(s) for s in PRODUCING_STATES)
_ROW_BY_ID = "SELECT * FROM jobs WHERE trace_id = ?"
_IN_PRODUCING = f"state IN ({','.join('?' * len(_PRODUCING))})"
_CLAIM_ORDER = rules.claim_order_sql("json_extract(job_json, '$.priority')")


def _placeholders(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


@functools.cache
def _insert_sql(names: tuple[str, ...]) -> str:
    """受理的 INSERT（列见 rows.new_job_columns；按列组合只拼一次）。"""
    return f"INSERT INTO jobs ({', '.join(names)}) VALUES ({_placeholders(names)})"


class SqliteJobStore:
    """JobStore 的 SQLite 实现。连接在第一次使用时打开（副本 __init__ 是同步的）。

    每个公开方法取一次时钟，把同步的 `_xxx(db, ...)` 交给组提交；它们只在账本线程里运行。
    行级操作一律是“读一行 → decisions 判定 → 照判定写 → 答复”（_mutate；答复要用写成的行时才重读）。
    """

    def __init__(
        self, path: Path, policy: JobPolicy, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = LedgerDatabase(lambda: open_ledger_db(path))
        self._policy = policy
        self._clock = clock
        self._decide = Decisions(policy)

    @property
    def database(self) -> LedgerDatabase:
        """底层连接与组提交（基准读它的批次统计）。"""
        return self._db

    # ---- 读写辅助（账本线程） ----

    @staticmethod
    def _row(db: sqlite3.Connection, trace_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(_ROW_BY_ID, (trace_id,)).fetchone()
        return row

    @staticmethod
    def _write(db: sqlite3.Connection, trace_id: str, columns: dict[str, Any]) -> None:
        """按判定改一行（列名只来自 decisions 的代码，值一律走参数绑定）。"""
        assignments = ", ".join(f"{name} = ?" for name in columns)
        db.execute(
            f"UPDATE jobs SET {assignments} WHERE trace_id = ?", (*columns.values(), trace_id)
        )

    def _mutate(
        self, db: sqlite3.Connection, now: float, op: str, trace_id: str, *args: Any
    ) -> Any:
        """行级操作：读一行，按 decisions 的同名判定写（或不写），答复。"""
        row = self._row(db, trace_id)
        step = getattr(self._decide, op)(row, now, *args)
        if row is None or step.columns is None:
            return step.reply
        self._write(db, trace_id, step.changes(row, now))
        return step.answer(self._row(db, trace_id)) if step.needs_row else step.reply

    def _fetch(self, db: sqlite3.Connection, trace_id: str) -> JobRecord:
        row = self._row(db, trace_id)
        assert row is not None
        return record_from_row(row)

    async def _now[T](self, work: Callable[..., T], *args: Any) -> T:
        """取一次时钟，在组提交里执行 work(db, now, *args)。"""
        now = self._clock()
        result: T = await self._db.run(lambda db: work(db, now, *args))
        return result

    # ---- JobStore ----

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """受理（见 JobStore.admit）。"""
        return await self._now(self._admit, job, owner, idempotency)

    def _admit(
        self,
        db: sqlite3.Connection,
        now: float,
        job: ReportJob,
        owner: str,
        idempotency: IdempotencyKey | None,
    ) -> Admission:
        existing = self._row(db, job.trace_id)
        if existing is not None:
            # 调用方超时重试：第一次其实已写入
            return Admission(record=record_from_row(existing))
        if idempotency is not None:
            replay = self._idempotent_replay(db, idempotency, now)
            if replay is not None:
                return replay
        retry_after = self._overload_retry_after(db, now, job.caller)
        if retry_after is not None:
            return Admission(record=None, retry_after_s=retry_after)
        row = new_job_columns(job, owner, now, self._decide.lease(now))
        db.execute(_insert_sql(tuple(row)), tuple(row.values()))
        if idempotency is not None:
            db.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?)",
                (idempotency.scope_key, idempotency.body_hash, job.trace_id, now),
            )
        return Admission(record=self._fetch(db, job.trace_id))

    def _idempotent_replay(
        self, db: sqlite3.Connection, key: IdempotencyKey, now: float
    ) -> Admission | None:
        hit = db.execute(
            "SELECT body_hash, trace_id FROM idempotency WHERE scope_key = ? AND created_at > ?",
            (key.scope_key, now - self._policy.idempotency_ttl_s),
        ).fetchone()
        answer, replayed = replay_decision(hit, key)
        if replayed is None:
            return answer
        return Admission(record=self._fetch(db, replayed), replayed=True)

    def _overload_retry_after(self, db: sqlite3.Connection, now: float, caller: str) -> int | None:
        """全局或这个调用方的未完成作业到了上限时返回建议的 Retry-After（rules.retry_after_s）。"""
        query = f"SELECT COUNT(*) FROM jobs WHERE {_IN_PRODUCING}"
        active = int(db.execute(query, _PRODUCING).fetchone()[0])
        mine = int(db.execute(f"{query} AND caller = ?", (*_PRODUCING, caller)).fetchone()[0])
        if rules.retry_after_s(active, 0, self._policy, mine) is None:
            return None
        recent = int(
            db.execute(
                "SELECT COUNT(*) FROM jobs WHERE produced_at > ?", (now - rules.RATE_WINDOW_S,)
            ).fetchone()[0]
        )
        return rules.retry_after_s(active, recent, self._policy, mine)

    async def get(self, trace_id: str) -> JobRecord | None:
        """按 trace_id 取作业。"""
        row: sqlite3.Row | None = await self._db.run(lambda db: self._row(db, trace_id))
        return record_from_row(row) if row is not None else None

    async def advance(
        self, trace_id: str, owner: str, state: JobState, passed: tuple[StateChange, ...] = ()
    ) -> AdvanceResult:
        """进入 rendering / generating（passed 见 JobStore.advance）。"""
        return cast(
            AdvanceResult, await self._now(self._mutate, "advance", trace_id, owner, state, passed)
        )

    async def finish(
        self,
        trace_id: str,
        owner: str,
        outcome: CallbackPayload,
        passed: tuple[StateChange, ...] = (),
    ) -> CallbackPayload | None:
        """记录结果。"""
        reply = await self._now(self._mutate, "finish", trace_id, owner, outcome, passed)
        return cast(CallbackPayload | None, reply)

    async def record_delivery(
        self, trace_id: str, owner: str, result: DeliveryOutcome
    ) -> JobRecord | None:
        """记录一轮投递。"""
        reply = await self._now(self._mutate, "record_delivery", trace_id, owner, result)
        return cast(JobRecord | None, reply)

    async def heartbeat(self, owner: str, trace_ids: list[str]) -> HeartbeatReply:
        """续租（见 JobStore.heartbeat）。"""
        if not trace_ids:
            return HeartbeatReply()
        return await self._now(self._heartbeat, owner, trace_ids)

    def _heartbeat(
        self, db: sqlite3.Connection, now: float, owner: str, trace_ids: list[str]
    ) -> HeartbeatReply:
        marks = _placeholders(trace_ids)
        db.execute(
            f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND trace_id IN ({marks})",
            (self._decide.lease(now), owner, *trace_ids),
        )
        rows = db.execute(
            f"SELECT trace_id, owner, cancel_requested, state FROM jobs"
            f" WHERE trace_id IN ({marks})",
            trace_ids,
        ).fetchall()
        return heartbeat_reply(owner, trace_ids, rows)

    async def claim_due(self, owner: str, limit: int) -> list[WorkItem]:
        """领取（见 JobStore.claim_due）：超过执行次数上限的作业改为 failed（worker_lost）。"""
        if limit <= 0:
            return []
        return await self._now(self._claim_due, owner, limit)

    def _claim_due(
        self, db: sqlite3.Connection, now: float, owner: str, limit: int
    ) -> list[WorkItem]:
        rows = db.execute(
            f"SELECT * FROM jobs WHERE (lease_until IS NULL OR lease_until < ?)"
            f" AND ({_IN_PRODUCING} OR (cb_state = ? AND cb_next_attempt_at <= ?))"
            f" ORDER BY {_CLAIM_ORDER} LIMIT ?",
            (now, *_PRODUCING, str(CallbackState.PENDING), now, limit),
        ).fetchall()
        items: list[WorkItem] = []
        for row in rows:
            changes, produce = self._decide.claim(row, now, owner)
            self._write(db, row["trace_id"], changes)
            items.append(WorkItem(record=self._fetch(db, row["trace_id"]), produce=produce))
        return items

    async def release(self, owner: str, trace_ids: list[str]) -> None:
        """交还租约；未完成的执行不计入次数。"""
        if not trace_ids:
            return
        await self._now(self._release, owner, trace_ids)

    @staticmethod
    def _release(db: sqlite3.Connection, now: float, owner: str, trace_ids: list[str]) -> None:
        marks = _placeholders(trace_ids)
        db.execute(
            f"UPDATE jobs SET runs = MAX(runs - 1, 0) WHERE owner = ?"
            f" AND trace_id IN ({marks}) AND {_IN_PRODUCING}",
            (owner, *trace_ids, *_PRODUCING),
        )
        db.execute(
            f"UPDATE jobs SET owner = NULL, lease_until = NULL, updated_at = ?"
            f" WHERE owner = ? AND trace_id IN ({marks})",
            (now, owner, *trace_ids),
        )

    async def request_cancel(self, trace_id: str) -> CancelResult:
        """登记取消。"""
        return cast(CancelResult, await self._now(self._mutate, "request_cancel", trace_id))

    async def redeliver(self, trace_id: str) -> JobRecord | None:
        """重新安排投递。"""
        return cast(JobRecord | None, await self._now(self._mutate, "redeliver", trace_id))

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """已放弃自动重投的作业。"""
        rows: list[sqlite3.Row] = await self._db.run(
            lambda db: db.execute(
                "SELECT * FROM jobs WHERE cb_state = ? ORDER BY updated_at DESC LIMIT ?",
                (str(CallbackState.UNDELIVERED), limit),
            ).fetchall()
        )
        return [record_from_row(r) for r in rows]

    async def purge_finished(self, limit: int) -> int:
        """删掉超过保留期的已结束作业（小批）与过期的幂等键；空出的页由之后的写入复用。"""
        return await self._now(self._purge_finished, limit)

    def _purge_finished(self, db: sqlite3.Connection, now: float, limit: int) -> int:
        jobs_before, keys_before = rules.purge_cutoffs(now, self._policy)
        finished = tuple(str(s) for s in rules.FINISHED_STATES)
        settled = tuple(str(s) for s in rules.SETTLED_CALLBACKS)
        deleted = db.execute(
            "DELETE FROM jobs WHERE trace_id IN (SELECT trace_id FROM jobs"
            f" WHERE cb_state IN ({_placeholders(settled)}) AND updated_at < ?"
            f" AND state IN ({_placeholders(finished)}) LIMIT ?)",
            (*settled, jobs_before, *finished, limit),
        ).rowcount
        db.execute("DELETE FROM idempotency WHERE created_at < ?", (keys_before,))
        return int(deleted)

    async def counts(self) -> LedgerCounts:
        """当前的作业总数（见 JobStore.counts；只读，不写盘）。"""

        def read(db: sqlite3.Connection) -> LedgerCounts:
            row = db.execute(COUNTS_SQL).fetchone()
            return LedgerCounts(
                active=row["active"],
                pending_redeliveries=row["pending_redeliveries"],
                undelivered=row["undelivered"],
            )

        counts: LedgerCounts = await self._db.run(read)
        return counts

    async def ping(self) -> None:
        """能打开数据库并执行一条查询（健康检查用）。"""
        await self._db.run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """关闭连接。"""
        await self._db.close()
