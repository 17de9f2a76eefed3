"""Postgres 账本：每个入口副本经自己的连接池直连数据库（没有单个 actor 在每个作业的路径上）。

- 判定一律调 rules.py（与 SQLite 账本相同）；这里只管持久化。
- 读 → 判定 → 写：写入以读到的 `version` 未变为条件（乐观并发）。租约被别的副本接手、取消登记、
  交还租约都会让 version 加一，于是失去租约的副本的写入落空，重读后由规则判定为“租约已丢”。
- 领取过期租约与到期重投：`FOR UPDATE SKIP LOCKED`，多个副本同时扫描时各领各的。
- 连接池（psycopg_pool）在第一次使用时打开并迁移结构；连接失败、池等待超时按 tenacity 重试，
  用尽即 LedgerUnavailable（503 + Retry-After）。
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger
from psycopg import AsyncConnection, OperationalError, sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from serve_app.core.errors import LedgerUnavailable
from serve_app.core.settings import JobPolicy
from serve_app.ledger import rules
from serve_app.ledger.postgres_schema import migrate
from serve_app.ledger.records import (
    PRODUCING_STATES,
    Admission,
    CallbackState,
    CancelResult,
    JobRecord,
    JobState,
    WorkItem,
)
from serve_app.ledger.rows import at, record_from_row, state_columns
from serve_app.ledger.rules import AdvanceResult
from serve_app.ledger.store import HeartbeatReply, IdempotencyKey
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

Conn = AsyncConnection[DictRow]
_PRODUCING = [str(s) for s in PRODUCING_STATES]
_ROW_BY_ID = "SELECT * FROM jobs WHERE trace_id = %s"
# 乐观并发的重读次数：只有同一作业上同时有别的写入才会重读（如续租回复带来的取消）
_CAS_ATTEMPTS = 8
# 连接断开、池里拿不到连接：可重试；用尽即账本不可用
_TRANSIENT = (OperationalError, PoolTimeout, TimeoutError)


@functools.cache
def _update_query(names: tuple[str, ...]) -> sql.Composed:
    """按列名组合的条件更新语句（列名只来自本模块的代码；同一组列只组合一次）。"""
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder()) for name in names
    )
    return sql.SQL(
        "UPDATE jobs SET {}, version = version + 1"
        " WHERE trace_id = %s AND version = %s RETURNING *"
    ).format(assignments)


class _Contended(RuntimeError):
    """同一作业的写入连续落空（别的写入一直抢先）：当作一次可重试的失败。"""


class PostgresJobStore:
    """JobStore 的 Postgres 实现。`url` 形如 postgresql://user:pass@host:5432/db。"""

    def __init__(
        self,
        url: str,
        policy: JobPolicy,
        *,
        pool_size: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._timeout_s = policy.ledger_call_timeout_s
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            connection_class=AsyncConnection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=policy.ledger_call_timeout_s,
            name="ledger",
        )
        self._ready = False
        self._ready_lock = asyncio.Lock()

    # ---- 连接与重试 ----

    async def _open(self) -> None:
        """第一次使用时打开连接池并迁移结构（数据库暂时不可达时下次调用再试）。"""
        async with self._ready_lock:
            if self._ready:
                return
            await self._pool.open()
            async with self._pool.connection() as conn:
                await migrate(conn)
            self._ready = True

    async def _run[T](self, name: str, work: Callable[[Conn, float], Awaitable[T]]) -> T:
        """取一个连接执行 work(conn, now)：有超时，连接类错误重试，用尽即 LedgerUnavailable。"""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((*_TRANSIENT, _Contended)),
            stop=stop_after_attempt(3),
            wait=wait_exponential(multiplier=0.1, max=2),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with asyncio.timeout(self._timeout_s):
                        if not self._ready:
                            await self._open()
                        async with self._pool.connection() as conn:
                            return await work(conn, self._clock())
        except (*_TRANSIENT, _Contended) as exc:
            logger.opt(exception=exc).warning("Postgres 账本调用失败：{}", name)
            raise LedgerUnavailable(f"作业账本暂不可用（{name}）") from exc
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    @staticmethod
    async def _row(conn: Conn, trace_id: str) -> DictRow | None:
        cursor = await conn.execute(_ROW_BY_ID, (trace_id,))
        return await cursor.fetchone()

    @staticmethod
    async def _write(
        conn: Conn, row: DictRow, now: float, state: JobState | None = None, **columns: Any
    ) -> DictRow | None:
        """以读到的 version 为条件更新一行；落空（期间有别的写入）返回 None。"""
        columns["updated_at"] = now
        columns |= state_columns(row, state, now)
        query = _update_query(tuple(columns))
        cursor = await conn.execute(query, (*columns.values(), row["trace_id"], row["version"]))
        return await cursor.fetchone()

    def _lease(self, now: float) -> float:
        return rules.lease_until(now, self._policy)

    # ---- JobStore ----

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """受理（见 JobStore.admit）。带 Idempotency-Key 时同一个键的受理由咨询锁串行。"""

        async def work(conn: Conn, now: float) -> Admission:
            if idempotency is None:
                return await self._admit(conn, now, job, owner, None)
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (idempotency.scope_key,),
                )
                return await self._admit(conn, now, job, owner, idempotency)

        return await self._run("admit", work)

    async def _admit(
        self,
        conn: Conn,
        now: float,
        job: ReportJob,
        owner: str,
        idempotency: IdempotencyKey | None,
    ) -> Admission:
        if idempotency is not None:
            # 与 SQLite 账本相同的顺序：同一 trace_id 的重试先于幂等重放
            existing = await self._row(conn, job.trace_id)
            if existing is not None:
                return Admission(record=record_from_row(existing))
            replay = await self._idempotent_replay(conn, idempotency, now)
            if replay is not None:
                return replay
        retry_after = await self._overload_retry_after(conn, now)
        if retry_after is not None:
            existing = await self._row(conn, job.trace_id)
            if existing is not None:
                return Admission(record=record_from_row(existing))
            return Admission(record=None, retry_after_s=retry_after)
        history = json.dumps([{"state": str(JobState.ACCEPTED), "at": at(now).isoformat()}])
        cursor = await conn.execute(
            "INSERT INTO jobs (trace_id, state, job_json, history_json, created_at,"
            " updated_at, owner, lease_until, runs, cb_state)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, %s)"
            " ON CONFLICT (trace_id) DO NOTHING RETURNING *",
            (
                job.trace_id,
                str(JobState.ACCEPTED),
                job.model_dump_json(),
                history,
                now,
                now,
                owner,
                self._lease(now),
                str(CallbackState.WAITING),
            ),
        )
        inserted = await cursor.fetchone()
        if inserted is None:
            # 调用方超时重试：第一次其实已写入
            existing = await self._row(conn, job.trace_id)
            assert existing is not None
            return Admission(record=record_from_row(existing))
        if idempotency is not None:
            await conn.execute(
                "INSERT INTO idempotency VALUES (%s, %s, %s, %s) ON CONFLICT (scope_key)"
                " DO UPDATE SET body_hash = EXCLUDED.body_hash, trace_id = EXCLUDED.trace_id,"
                " created_at = EXCLUDED.created_at",
                (idempotency.scope_key, idempotency.body_hash, job.trace_id, now),
            )
        return Admission(record=record_from_row(inserted))

    async def _idempotent_replay(
        self, conn: Conn, key: IdempotencyKey, now: float
    ) -> Admission | None:
        cursor = await conn.execute(
            "SELECT body_hash, trace_id FROM idempotency WHERE scope_key = %s AND created_at > %s",
            (key.scope_key, now - self._policy.idempotency_ttl_s),
        )
        hit = await cursor.fetchone()
        if hit is None:
            return None
        if hit["body_hash"] != key.body_hash:
            return Admission(record=None, conflict_trace_id=hit["trace_id"])
        row = await self._row(conn, hit["trace_id"])
        assert row is not None
        return Admission(record=record_from_row(row), replayed=True)

    async def _overload_retry_after(self, conn: Conn, now: float) -> int | None:
        """未完成作业达到上限时返回建议的 Retry-After（估算见 rules.retry_after_s）。"""
        cursor = await conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE state = ANY(%s)", (_PRODUCING,)
        )
        counted = await cursor.fetchone()
        active = int(counted["n"]) if counted is not None else 0
        if active < self._policy.max_active_jobs:
            return None
        cursor = await conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE produced_at > %s", (now - rules.RATE_WINDOW_S,)
        )
        recent = await cursor.fetchone()
        return rules.retry_after_s(active, int(recent["n"]) if recent else 0, self._policy)

    async def get(self, trace_id: str) -> JobRecord | None:
        """按 trace_id 取作业。"""

        async def work(conn: Conn, _now: float) -> JobRecord | None:
            row = await self._row(conn, trace_id)
            return record_from_row(row) if row is not None else None

        return await self._run("get", work)

    async def advance(self, trace_id: str, owner: str, state: JobState) -> AdvanceResult:
        """进入 rendering / generating。"""

        async def work(conn: Conn, now: float) -> AdvanceResult:
            for _ in range(_CAS_ATTEMPTS):
                row = await self._row(conn, trace_id)
                if row is None:
                    return "lost"
                verdict = rules.advance_verdict(
                    row["state"], row["owner"], owner, bool(row["cancel_requested"])
                )
                if verdict != "ok":
                    return verdict
                if await self._write(conn, row, now, state, lease_until=self._lease(now)):
                    return "ok"
            raise _Contended(trace_id)

        return await self._run("advance", work)

    async def finish(
        self, trace_id: str, owner: str, outcome: CallbackPayload
    ) -> CallbackPayload | None:
        """记录结果（见 JobStore.finish）。"""

        async def work(conn: Conn, now: float) -> CallbackPayload | None:
            for _ in range(_CAS_ATTEMPTS):
                row = await self._row(conn, trace_id)
                if row is None:
                    return None
                if rules.finish_replayed(row["state"], row["owner"], owner) and row["outcome_json"]:
                    return CallbackPayload.model_validate_json(row["outcome_json"])
                if not rules.holds_production(row["state"], row["owner"], owner):
                    return None
                job = ReportJob.model_validate_json(row["job_json"])
                final = rules.final_outcome(job, outcome, bool(row["cancel_requested"]))
                columns = self._outcome_columns(now, final) | {"lease_until": self._lease(now)}
                if await self._write(conn, row, now, JobState.DELIVERING, **columns):
                    return final
            raise _Contended(trace_id)

        return await self._run("finish", work)

    @staticmethod
    def _outcome_columns(now: float, outcome: CallbackPayload) -> dict[str, Any]:
        return {
            "outcome_json": outcome.model_dump_json(),
            "produced_at": now,
            "cb_state": str(CallbackState.PENDING),
            "cb_next_attempt_at": now,
        }

    async def record_delivery(
        self, trace_id: str, owner: str, result: DeliveryOutcome
    ) -> JobRecord | None:
        """记录一轮投递（见 JobStore.record_delivery）：只有仍持有租约的副本能记录。"""

        async def work(conn: Conn, now: float) -> JobRecord | None:
            for _ in range(_CAS_ATTEMPTS):
                row = await self._row(conn, trace_id)
                if row is None or row["outcome_json"] is None:
                    return None
                if not rules.holds_delivery(row["owner"], owner):
                    return None
                written = await self._write_delivery(conn, row, now, result)
                if written is not None:
                    return record_from_row(written)
            raise _Contended(trace_id)

        return await self._run("record_delivery", work)

    async def _write_delivery(
        self, conn: Conn, row: DictRow, now: float, result: DeliveryOutcome
    ) -> DictRow | None:
        final = rules.state_after_delivery(CallbackPayload.model_validate_json(row["outcome_json"]))
        columns: dict[str, Any] = {
            "cb_attempts": row["cb_attempts"] + result.attempts,
            "cb_last_status": result.status_code,
            "cb_last_error": result.error,
            "owner": None,
            "lease_until": None,
        }
        if result.delivered:
            columns |= {
                "cb_state": str(CallbackState.DELIVERED),
                "cb_delivered_at": now,
                "cb_next_attempt_at": None,
            }
            return await self._write(conn, row, now, final, **columns)
        plan = rules.plan_redelivery(
            now=now,
            first_failed_at=row["cb_first_failed_at"],
            rounds=row["cb_rounds"],
            permanent=result.permanent,
            policy=self._policy,
        )
        columns |= {
            "cb_first_failed_at": plan.first_failed_at,
            "cb_rounds": plan.rounds,
            "cb_state": str(plan.callback_state),
            "cb_next_attempt_at": plan.next_attempt_at,
        }
        # 仍在重投时状态保持不变（delivering；对已终态作业的手动重投保持终态）
        return await self._write(conn, row, now, final if plan.undelivered else None, **columns)

    async def heartbeat(self, owner: str, trace_ids: list[str]) -> HeartbeatReply:
        """续租（见 JobStore.heartbeat）：只延长租约，不改 version（不打断持有者自己的写入）。"""
        if not trace_ids:
            return HeartbeatReply()

        async def work(conn: Conn, now: float) -> HeartbeatReply:
            cursor = await conn.execute(
                "UPDATE jobs SET lease_until = %s WHERE owner = %s AND trace_id = ANY(%s)"
                " RETURNING trace_id, cancel_requested, state",
                (self._lease(now), owner, trace_ids),
            )
            owned = {r["trace_id"]: r for r in await cursor.fetchall()}
            return HeartbeatReply(
                cancel=[
                    t
                    for t, r in owned.items()
                    if r["cancel_requested"] and rules.is_producing(r["state"])
                ],
                lost=[t for t in trace_ids if t not in owned],
            )

        return await self._run("heartbeat", work)

    async def claim_due(self, owner: str, limit: int) -> list[WorkItem]:
        """领取（见 JobStore.claim_due）：SKIP LOCKED，多个副本同时扫描互不阻塞、不重复领取。"""
        if limit <= 0:
            return []

        async def work(conn: Conn, now: float) -> list[WorkItem]:
            async with conn.transaction():
                cursor = await conn.execute(
                    "SELECT * FROM jobs WHERE (lease_until IS NULL OR lease_until < %s)"
                    " AND (state = ANY(%s) OR (cb_state = %s AND cb_next_attempt_at <= %s))"
                    " ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED",
                    (now, _PRODUCING, str(CallbackState.PENDING), now, limit),
                )
                return [await self._claim(conn, row, now, owner) for row in await cursor.fetchall()]

        return await self._run("claim_due", work)

    async def _claim(self, conn: Conn, row: DictRow, now: float, owner: str) -> WorkItem:
        lease: dict[str, Any] = {"owner": owner, "lease_until": self._lease(now)}
        produce = rules.is_producing(row["state"])
        ended = None
        if produce:
            ended = rules.recovery_outcome(
                ReportJob.model_validate_json(row["job_json"]),
                row["runs"],
                bool(row["cancel_requested"]),
                self._policy,
            )
        if ended is not None:
            written = await self._write(
                conn, row, now, JobState.DELIVERING, **self._outcome_columns(now, ended), **lease
            )
            produce = False
        elif produce:
            written = await self._write(conn, row, now, runs=row["runs"] + 1, **lease)
        else:
            written = await self._write(conn, row, now, **lease)
        # 行已被本事务锁住：条件更新不会落空
        assert written is not None
        return WorkItem(record=record_from_row(written), produce=produce)

    async def release(self, owner: str, trace_ids: list[str]) -> None:
        """交还租约；未完成的执行不计入次数。"""
        if not trace_ids:
            return

        async def work(conn: Conn, now: float) -> None:
            await conn.execute(
                "UPDATE jobs SET owner = NULL, lease_until = NULL, updated_at = %s,"
                " version = version + 1,"
                " runs = CASE WHEN state = ANY(%s) THEN greatest(runs - 1, 0) ELSE runs END"
                " WHERE owner = %s AND trace_id = ANY(%s)",
                (now, _PRODUCING, owner, trace_ids),
            )

        await self._run("release", work)

    async def request_cancel(self, trace_id: str) -> CancelResult:
        """登记取消（见 JobStore.request_cancel）。"""

        async def work(conn: Conn, now: float) -> CancelResult:
            for _ in range(_CAS_ATTEMPTS):
                row = await self._row(conn, trace_id)
                if row is None:
                    return CancelResult(record=None, accepted=False)
                if not rules.is_producing(row["state"]):
                    return CancelResult(record=record_from_row(row), accepted=False)
                written = await self._write(conn, row, now, cancel_requested=1)
                if written is not None:
                    return CancelResult(record=record_from_row(written), accepted=True)
            raise _Contended(trace_id)

        return await self._run("request_cancel", work)

    async def redeliver(self, trace_id: str) -> JobRecord | None:
        """重新安排投递（见 JobStore.redeliver）。"""

        async def work(conn: Conn, now: float) -> JobRecord | None:
            for _ in range(_CAS_ATTEMPTS):
                row = await self._row(conn, trace_id)
                if row is None:
                    return None
                if row["outcome_json"] is None:
                    return record_from_row(row)
                written = await self._write(
                    conn,
                    row,
                    now,
                    cb_state=str(CallbackState.PENDING),
                    cb_next_attempt_at=now,
                    cb_first_failed_at=None,
                    cb_rounds=0,
                )
                if written is not None:
                    return record_from_row(written)
            raise _Contended(trace_id)

        return await self._run("redeliver", work)

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """已放弃自动重投的作业。"""

        async def work(conn: Conn, _now: float) -> list[JobRecord]:
            cursor = await conn.execute(
                "SELECT * FROM jobs WHERE cb_state = %s ORDER BY updated_at DESC LIMIT %s",
                (str(CallbackState.UNDELIVERED), limit),
            )
            return [record_from_row(r) for r in await cursor.fetchall()]

        return await self._run("list_undelivered", work)

    async def ping(self) -> None:
        """能取得连接并执行一条查询（健康检查用）。"""

        async def work(conn: Conn, _now: float) -> None:
            await conn.execute("SELECT 1")

        await self._run("ping", work)

    async def close(self) -> None:
        """关闭连接池。"""
        await self._pool.close()
