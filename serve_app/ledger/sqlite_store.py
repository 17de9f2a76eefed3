"""SQLite（WAL）账本：单个 Ledger 副本独占一个文件，所有写入串行、每次提交落盘。"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from serve_app.core.errors import ErrorCode
from serve_app.core.settings import JobPolicy
from serve_app.ledger.records import (
    PRODUCING_STATES,
    Admission,
    CallbackState,
    CallbackStatus,
    CancelResult,
    JobRecord,
    JobState,
    StateChange,
    WorkItem,
)
from serve_app.ledger.store import AdvanceResult, HeartbeatReply, IdempotencyKey
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob, webhook_id

_SCHEMA = """
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
"""

_PRODUCING = tuple(str(s) for s in PRODUCING_STATES)
_IN_PRODUCING = f"state IN ({','.join('?' * len(_PRODUCING))})"
# 估算 Retry-After 用的吞吐窗口（秒）
_RATE_WINDOW_S = 60.0
_DEFAULT_RETRY_AFTER_S = 5
_MAX_RETRY_AFTER_S = 60


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else _at(epoch)


def _placeholders(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


class SqliteJobStore:
    """JobStore 的 SQLite 实现。连接在第一次使用时打开（副本 __init__ 是同步的）。"""

    def __init__(
        self, path: Path, policy: JobPolicy, clock: Callable[[], float] = time.time
    ) -> None:
        self._path = path
        self._policy = policy
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()
        # 单连接：事务不能交错，所有访问串行
        self._lock = asyncio.Lock()

    async def _connection(self) -> aiosqlite.Connection:
        async with self._open_lock:
            if self._db is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                connection = aiosqlite.connect(self._path, isolation_level=None)
                # aiosqlite 的工作线程默认非守护：忘了 close 时会卡住进程退出。
                # 设为守护线程：已提交的事务在 WAL 里，进程退出不会丢
                connection.daemon = True
                db = await connection
                db.row_factory = aiosqlite.Row
                await db.execute("PRAGMA journal_mode=WAL")
                # FULL：每次提交都 fsync，202 发出前作业已落盘
                await db.execute("PRAGMA synchronous=FULL")
                await db.execute("PRAGMA busy_timeout=5000")
                await db.executescript(_SCHEMA)
                self._db = db
            return self._db

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        db = await self._connection()
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    # ---- 读写辅助 ----

    async def _row(self, db: aiosqlite.Connection, trace_id: str) -> aiosqlite.Row | None:
        async with db.execute("SELECT * FROM jobs WHERE trace_id = ?", (trace_id,)) as cur:
            return await cur.fetchone()

    def _record(self, row: aiosqlite.Row) -> JobRecord:
        outcome = row["outcome_json"]
        return JobRecord(
            job=ReportJob.model_validate_json(row["job_json"]),
            state=JobState(row["state"]),
            updated_at=_at(row["updated_at"]),
            outcome=CallbackPayload.model_validate_json(outcome) if outcome else None,
            cancel_requested=bool(row["cancel_requested"]),
            runs=row["runs"],
            callback=CallbackStatus(
                state=CallbackState(row["cb_state"]),
                attempts=row["cb_attempts"],
                delivered_at=_dt(row["cb_delivered_at"]),
                last_status_code=row["cb_last_status"],
                last_error=row["cb_last_error"],
                next_attempt_at=_dt(row["cb_next_attempt_at"]),
                webhook_id=webhook_id(row["trace_id"]),
            ),
            history=[StateChange.model_validate(h) for h in json.loads(row["history_json"])],
        )

    async def _update(
        self,
        db: aiosqlite.Connection,
        row: aiosqlite.Row,
        now: float,
        state: JobState | None = None,
        **columns: Any,
    ) -> None:
        """更新一行；状态变化时追加到历史。"""
        columns["updated_at"] = now
        if state is not None and state != row["state"]:
            history = json.loads(row["history_json"])
            history.append({"state": str(state), "at": _dt(now).isoformat()})  # type: ignore[union-attr]
            columns["state"] = str(state)
            columns["history_json"] = json.dumps(history)
        # 列名只来自本模块的代码，值一律走参数绑定
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await db.execute(
            f"UPDATE jobs SET {assignments} WHERE trace_id = ?",
            (*columns.values(), row["trace_id"]),
        )

    async def _fetch(self, db: aiosqlite.Connection, trace_id: str) -> JobRecord:
        row = await self._row(db, trace_id)
        assert row is not None
        return self._record(row)

    def _lease(self, now: float) -> float:
        return now + self._policy.lease_s

    # ---- JobStore ----

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """受理（见 JobStore.admit）。"""
        now = self._clock()
        async with self._tx() as db:
            existing = await self._row(db, job.trace_id)
            if existing is not None:
                # 调用方超时重试：第一次其实已写入
                return Admission(record=self._record(existing))
            if idempotency is not None:
                replay = await self._idempotent_replay(db, idempotency, now)
                if replay is not None:
                    return replay
            retry_after = await self._overload_retry_after(db, now)
            if retry_after is not None:
                return Admission(record=None, retry_after_s=retry_after)
            history = [{"state": str(JobState.ACCEPTED), "at": _dt(now).isoformat()}]  # type: ignore[union-attr]
            await db.execute(
                "INSERT INTO jobs (trace_id, state, job_json, history_json, created_at,"
                " updated_at, owner, lease_until, runs, cb_state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (
                    job.trace_id,
                    str(JobState.ACCEPTED),
                    job.model_dump_json(),
                    json.dumps(history),
                    now,
                    now,
                    owner,
                    self._lease(now),
                    str(CallbackState.WAITING),
                ),
            )
            if idempotency is not None:
                await db.execute(
                    "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?)",
                    (idempotency.scope_key, idempotency.body_hash, job.trace_id, now),
                )
            return Admission(record=await self._fetch(db, job.trace_id))

    async def _idempotent_replay(
        self, db: aiosqlite.Connection, key: IdempotencyKey, now: float
    ) -> Admission | None:
        async with db.execute(
            "SELECT body_hash, trace_id FROM idempotency WHERE scope_key = ? AND created_at > ?",
            (key.scope_key, now - self._policy.idempotency_ttl_s),
        ) as cur:
            hit = await cur.fetchone()
        if hit is None:
            return None
        if hit["body_hash"] != key.body_hash:
            return Admission(record=None, conflict_trace_id=hit["trace_id"])
        return Admission(record=await self._fetch(db, hit["trace_id"]), replayed=True)

    async def _overload_retry_after(self, db: aiosqlite.Connection, now: float) -> int | None:
        """未完成作业达到上限时返回建议的 Retry-After（按最近吞吐估算腾出 10% 的时间）。"""
        query = f"SELECT COUNT(*) FROM jobs WHERE {_IN_PRODUCING}"
        async with db.execute(query, _PRODUCING) as cur:
            active = (await cur.fetchone() or (0,))[0]
        if active < self._policy.max_active_jobs:
            return None
        async with db.execute(
            "SELECT COUNT(*) FROM jobs WHERE produced_at > ?", (now - _RATE_WINDOW_S,)
        ) as cur:
            recent = (await cur.fetchone() or (0,))[0]
        if recent == 0:
            return _DEFAULT_RETRY_AFTER_S
        rate = recent / _RATE_WINDOW_S
        seconds = math.ceil(0.1 * self._policy.max_active_jobs / rate)
        return max(1, min(_MAX_RETRY_AFTER_S, seconds))

    async def get(self, trace_id: str) -> JobRecord | None:
        """按 trace_id 取作业。"""
        db = await self._connection()
        async with self._lock:
            row = await self._row(db, trace_id)
        return self._record(row) if row is not None else None

    async def advance(self, trace_id: str, owner: str, state: JobState) -> AdvanceResult:
        """进入 rendering / generating。"""
        now = self._clock()
        async with self._tx() as db:
            row = await self._row(db, trace_id)
            if row is None or row["owner"] != owner or row["state"] not in _PRODUCING:
                return "lost"
            if row["cancel_requested"]:
                return "cancelled"
            await self._update(db, row, now, state, lease_until=self._lease(now))
            return "ok"

    async def finish(
        self, trace_id: str, owner: str, outcome: CallbackPayload
    ) -> CallbackPayload | None:
        """记录结果（见 JobStore.finish）。"""
        now = self._clock()
        async with self._tx() as db:
            row = await self._row(db, trace_id)
            if row is None or row["owner"] != owner or row["state"] not in _PRODUCING:
                return None
            if row["cancel_requested"] and outcome.status != "cancelled":
                outcome = CallbackPayload.cancelled(ReportJob.model_validate_json(row["job_json"]))
            await self._set_outcome(db, row, now, outcome, lease_until=self._lease(now))
            return outcome

    async def _set_outcome(
        self,
        db: aiosqlite.Connection,
        row: aiosqlite.Row,
        now: float,
        outcome: CallbackPayload,
        **columns: Any,
    ) -> None:
        await self._update(
            db,
            row,
            now,
            JobState.DELIVERING,
            outcome_json=outcome.model_dump_json(),
            produced_at=now,
            cb_state=str(CallbackState.PENDING),
            cb_next_attempt_at=now,
            **columns,
        )

    async def record_delivery(
        self, trace_id: str, owner: str, result: DeliveryOutcome
    ) -> JobRecord | None:
        """记录一轮投递（见 JobStore.record_delivery）。"""
        now = self._clock()
        async with self._tx() as db:
            row = await self._row(db, trace_id)
            if row is None or row["outcome_json"] is None:
                return None
            final = JobState(CallbackPayload.model_validate_json(row["outcome_json"]).status)
            common: dict[str, Any] = {
                "cb_attempts": row["cb_attempts"] + result.attempts,
                "cb_last_status": result.status_code,
                "cb_last_error": result.error,
            }
            if row["owner"] == owner:
                common |= {"owner": None, "lease_until": None}
            if result.delivered:
                await self._update(
                    db,
                    row,
                    now,
                    final,
                    cb_state=str(CallbackState.DELIVERED),
                    cb_delivered_at=now,
                    cb_next_attempt_at=None,
                    **common,
                )
            else:
                await self._schedule_redelivery(db, row, now, final, result, common)
            return await self._fetch(db, trace_id)

    async def _schedule_redelivery(
        self,
        db: aiosqlite.Connection,
        row: aiosqlite.Row,
        now: float,
        final: JobState,
        result: DeliveryOutcome,
        common: dict[str, Any],
    ) -> None:
        """按重投表安排下一次；超过期限（或不可重试）即 undelivered。"""
        first_failed = row["cb_first_failed_at"] or now
        rounds = row["cb_rounds"] + 1
        schedule = self._policy.redelivery_schedule_s
        deadline = first_failed + self._policy.redelivery_horizon_s
        next_at = min(now + schedule[min(rounds, len(schedule)) - 1], deadline)
        common |= {"cb_first_failed_at": first_failed, "cb_rounds": rounds}
        if result.permanent or now >= deadline:
            await self._update(
                db,
                row,
                now,
                final,
                cb_state=str(CallbackState.UNDELIVERED),
                cb_next_attempt_at=None,
                **common,
            )
            return
        # 状态保持不变（delivering；对已终态作业的手动重投保持终态）
        await self._update(
            db, row, now, cb_state=str(CallbackState.PENDING), cb_next_attempt_at=next_at, **common
        )

    async def heartbeat(self, owner: str, trace_ids: list[str]) -> HeartbeatReply:
        """续租（见 JobStore.heartbeat）。"""
        if not trace_ids:
            return HeartbeatReply()
        now = self._clock()
        marks = _placeholders(trace_ids)
        async with self._tx() as db:
            await db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND trace_id IN ({marks})",
                (self._lease(now), owner, *trace_ids),
            )
            async with db.execute(
                f"SELECT trace_id, owner, cancel_requested, state FROM jobs"
                f" WHERE trace_id IN ({marks})",
                trace_ids,
            ) as cur:
                rows = list(await cur.fetchall())
        owned = {r["trace_id"]: r for r in rows if r["owner"] == owner}
        return HeartbeatReply(
            cancel=[
                t for t, r in owned.items() if r["cancel_requested"] and r["state"] in _PRODUCING
            ],
            lost=[t for t in trace_ids if t not in owned],
        )

    async def claim_due(self, owner: str, limit: int) -> list[WorkItem]:
        """领取（见 JobStore.claim_due）：超过执行次数上限的作业改为 failed（worker_lost）。"""
        if limit <= 0:
            return []
        now = self._clock()
        items: list[WorkItem] = []
        async with self._tx() as db:
            async with db.execute(
                f"SELECT * FROM jobs WHERE (lease_until IS NULL OR lease_until < ?)"
                f" AND ({_IN_PRODUCING} OR (cb_state = ? AND cb_next_attempt_at <= ?))"
                " ORDER BY updated_at LIMIT ?",
                (now, *_PRODUCING, str(CallbackState.PENDING), now, limit),
            ) as cur:
                rows = list(await cur.fetchall())
            for row in rows:
                lease: dict[str, Any] = {"owner": owner, "lease_until": self._lease(now)}
                produce = row["state"] in _PRODUCING
                if produce and (row["cancel_requested"] or row["runs"] >= self._policy.max_runs):
                    job = ReportJob.model_validate_json(row["job_json"])
                    outcome = (
                        CallbackPayload.cancelled(job)
                        if row["cancel_requested"]
                        else CallbackPayload.failed(
                            job,
                            ErrorCode.WORKER_LOST,
                            f"执行作业的副本失联 {row['runs']} 次，已放弃",
                        )
                    )
                    await self._set_outcome(db, row, now, outcome, **lease)
                    produce = False
                elif produce:
                    await self._update(db, row, now, runs=row["runs"] + 1, **lease)
                else:
                    await self._update(db, row, now, **lease)
                record = await self._fetch(db, row["trace_id"])
                items.append(WorkItem(record=record, produce=produce))
        return items

    async def release(self, owner: str, trace_ids: list[str]) -> None:
        """交还租约；未完成的执行不计入次数。"""
        if not trace_ids:
            return
        now = self._clock()
        marks = _placeholders(trace_ids)
        async with self._tx() as db:
            await db.execute(
                f"UPDATE jobs SET runs = MAX(runs - 1, 0) WHERE owner = ?"
                f" AND trace_id IN ({marks}) AND {_IN_PRODUCING}",
                (owner, *trace_ids, *_PRODUCING),
            )
            await db.execute(
                f"UPDATE jobs SET owner = NULL, lease_until = NULL, updated_at = ?"
                f" WHERE owner = ? AND trace_id IN ({marks})",
                (now, owner, *trace_ids),
            )

    async def request_cancel(self, trace_id: str) -> CancelResult:
        """登记取消（见 JobStore.request_cancel）。"""
        now = self._clock()
        async with self._tx() as db:
            row = await self._row(db, trace_id)
            if row is None:
                return CancelResult(record=None, accepted=False)
            if row["state"] not in _PRODUCING:
                return CancelResult(record=self._record(row), accepted=False)
            await self._update(db, row, now, cancel_requested=1)
            return CancelResult(record=await self._fetch(db, trace_id), accepted=True)

    async def redeliver(self, trace_id: str) -> JobRecord | None:
        """重新安排投递（见 JobStore.redeliver）。"""
        now = self._clock()
        async with self._tx() as db:
            row = await self._row(db, trace_id)
            if row is None:
                return None
            if row["outcome_json"] is not None:
                await self._update(
                    db,
                    row,
                    now,
                    cb_state=str(CallbackState.PENDING),
                    cb_next_attempt_at=now,
                    cb_first_failed_at=None,
                    cb_rounds=0,
                )
            return await self._fetch(db, trace_id)

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """已放弃自动重投的作业。"""
        db = await self._connection()
        async with (
            self._lock,
            db.execute(
                "SELECT * FROM jobs WHERE cb_state = ? ORDER BY updated_at DESC LIMIT ?",
                (str(CallbackState.UNDELIVERED), limit),
            ) as cur,
        ):
            rows = list(await cur.fetchall())
        return [self._record(r) for r in rows]

    async def close(self) -> None:
        """关闭连接。"""
        async with self._open_lock:
            if self._db is not None:
                await self._db.close()
                self._db = None
