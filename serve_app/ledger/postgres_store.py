"""Postgres 账本：每个入口副本经自己的连接池直连数据库（没有单个 actor 在每个作业的路径上）。

- 判定一律调 decisions.py（与 SQLite 账本相同）；这里只管读、写与合批，批量语句在 postgres_sql.py。
- 读 → 判定 → 写：写入以读到的 `version` 未变为条件（乐观并发）。租约被别的副本接手、取消登记、
  交还租约都会让 version 加一，于是失去租约的副本的写入落空，重读后由规则判定为“租约已丢”。
- 组提交：作业路径上的操作（受理、推进、结果、投递、取消、重投）经 CallBatcher 合批，一批只用
  一条批量读与一条批量条件写（unnest），每条语句一次提交；落空的重读再判。
- 副本记住自己最近写成的行：同一作业的下一次操作直接以它判定、以它的 version 为条件写，不必先读；
  别人改过（取消、接手、交还）则条件写落空，重读再判，所以只省读，不会写错。
- 领取过期租约与到期重投：`FOR UPDATE SKIP LOCKED`，多个副本同时扫描时各领各的。
- 连接池、超时与重试在 postgres_pool.py（用尽即 LedgerUnavailable，503 + Retry-After）。
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from psycopg.rows import DictRow

from serve_app.core.errors import LedgerUnavailable
from serve_app.core.settings import JobPolicy
from serve_app.ledger import rules
from serve_app.ledger.call_batcher import Call, CallBatcher, Outcome
from serve_app.ledger.decisions import ROW_OPERATIONS, Decisions, heartbeat_reply, replay_decision
from serve_app.ledger.postgres_memory import RowMemory
from serve_app.ledger.postgres_pool import LedgerPool
from serve_app.ledger.postgres_sql import Conn, batch_insert, batch_update
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
from serve_app.ledger.rows import COUNTS_SQL, record_from_row
from serve_app.ledger.rules import AdvanceResult
from serve_app.ledger.store import HeartbeatReply, IdempotencyKey, LedgerCounts
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

_PRODUCING = [str(s) for s in PRODUCING_STATES]
_ROW_BY_ID = "SELECT * FROM jobs WHERE trace_id = %s"
_CLAIM_ORDER = rules.claim_order_sql("(job_json::jsonb ->> 'priority')")
# 每个副本记住的行数上限（它正在处理的作业的最新行，省掉每次操作前的读；约几 KB 一行）
_REMEMBERED_ROWS = 4096
# 乐观并发的重读轮数：只有同一作业上同时有别的写入（或同一批里排在后面）才会重读
_CAS_ATTEMPTS = 8


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
        self._pool = LedgerPool(
            url, size=pool_size, timeout_s=policy.ledger_call_timeout_s, clock=clock
        )
        # 本副本最近写成或读到的行与解析好的作业（见 postgres_memory；_current_rows 先查它）
        self._memory = RowMemory(_REMEMBERED_ROWS)
        self._batcher = CallBatcher(self._apply, max_in_flight=4, max_batch=256)
        # 判定层（与 SQLite 账本共用）；作业从记住的解析结果取
        self._decide = Decisions(policy, job_of=self._memory.job_of)

    @property
    def batcher(self) -> CallBatcher:
        """合批统计（测试与基准读它）。"""
        return self._batcher

    @staticmethod
    async def _row(conn: Conn, trace_id: str) -> DictRow | None:
        cursor = await conn.execute(_ROW_BY_ID, (trace_id,))
        return await cursor.fetchone()

    # ---- JobStore ----

    async def _admit_keyed(
        self, conn: Conn, now: float, job: ReportJob, owner: str, key: IdempotencyKey
    ) -> Admission:
        """带幂等键的受理（调用方在事务里、持有这个键的咨询锁）：同一 trace_id 的重试先于幂等重放
        （与 SQLite 账本相同的顺序），然后与不带键的受理同样判限流、插入，最后记下键。"""
        existing = await self._row(conn, job.trace_id)
        if existing is not None:
            return Admission(record=record_from_row(existing))
        cursor = await conn.execute(
            "SELECT body_hash, trace_id FROM idempotency WHERE scope_key = %s AND created_at > %s",
            (key.scope_key, now - self._policy.idempotency_ttl_s),
        )
        answer, replayed = replay_decision(await cursor.fetchone(), key)
        if replayed is not None:
            row = await self._row(conn, replayed)
            assert row is not None
            return Admission(record=record_from_row(row), replayed=True)
        if answer is not None:
            return answer
        [admission] = await self._admit_plain(conn, now, [(job, owner)])
        if admission.record is not None:
            await conn.execute(
                "INSERT INTO idempotency VALUES (%s, %s, %s, %s) ON CONFLICT (scope_key)"
                " DO UPDATE SET body_hash = EXCLUDED.body_hash, trace_id = EXCLUDED.trace_id,"
                " created_at = EXCLUDED.created_at",
                (key.scope_key, key.body_hash, job.trace_id, now),
            )
        return admission

    @staticmethod
    async def _active_counts(conn: Conn) -> tuple[int, dict[str, int]]:
        """未完成的作业：总数与各调用方的个数（一条查询）。"""
        cursor = await conn.execute(
            "SELECT caller, count(*) AS n FROM jobs WHERE state = ANY(%s) GROUP BY caller",
            (_PRODUCING,),
        )
        per_caller = {row["caller"]: int(row["n"]) for row in await cursor.fetchall()}
        return sum(per_caller.values()), per_caller

    async def get(self, trace_id: str) -> JobRecord | None:
        """按 trace_id 取作业。"""

        async def work(conn: Conn, _now: float) -> JobRecord | None:
            row = await self._row(conn, trace_id)
            return record_from_row(row) if row is not None else None

        return await self._pool.run("get", work)

    # ---- 作业路径上的操作：合批执行 ----

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """受理（见 JobStore.admit）。带 Idempotency-Key 的在事务里由咨询锁串行同一个键。"""
        return cast(Admission, await self._batcher.call("admit", job, owner, idempotency))

    async def advance(
        self, trace_id: str, owner: str, state: JobState, passed: tuple[StateChange, ...] = ()
    ) -> AdvanceResult:
        """进入 rendering / generating（passed 见 JobStore.advance）。"""
        return cast(
            AdvanceResult, await self._batcher.call("advance", trace_id, owner, state, passed)
        )

    async def finish(
        self,
        trace_id: str,
        owner: str,
        outcome: CallbackPayload,
        passed: tuple[StateChange, ...] = (),
    ) -> CallbackPayload | None:
        """记录结果（见 JobStore.finish）。"""
        result = await self._batcher.call("finish", trace_id, owner, outcome, passed)
        return cast(CallbackPayload | None, result)

    async def record_delivery(
        self, trace_id: str, owner: str, result: DeliveryOutcome
    ) -> JobRecord | None:
        """记录一轮投递（见 JobStore.record_delivery）：只有仍持有租约的副本能记录。"""
        record = await self._batcher.call("record_delivery", trace_id, owner, result)
        return cast(JobRecord | None, record)

    async def request_cancel(self, trace_id: str) -> CancelResult:
        """登记取消（见 JobStore.request_cancel）。"""
        return cast(CancelResult, await self._batcher.call("request_cancel", trace_id))

    async def redeliver(self, trace_id: str) -> JobRecord | None:
        """重新安排投递（见 JobStore.redeliver）。"""
        return cast(JobRecord | None, await self._batcher.call("redeliver", trace_id))

    async def _apply(self, calls: list[Call]) -> list[Outcome]:
        """一批操作：受理一条批量插入；其余一轮一条批量条件写（本副本没记住的行先一条批量读），
        落空的重读再判。"""

        async def work(conn: Conn, now: float) -> list[Outcome]:
            outcomes: dict[int, Outcome] = {}
            admits = [i for i, (method, _) in enumerate(calls) if method == "admit"]
            if admits:
                await self._admit_batch(conn, now, calls, admits, outcomes)
            pending = [i for i, (method, _) in enumerate(calls) if method != "admit"]
            for _ in range(_CAS_ATTEMPTS):
                if not pending:
                    break
                pending = await self._mutate_round(conn, now, calls, pending, outcomes)
            for i in pending:
                outcomes[i] = (False, LedgerUnavailable(f"作业 {calls[i][1][0]} 的写入一再落空"))
            return [outcomes[i] for i in range(len(calls))]

        return await self._pool.run("batch", work)

    async def _mutate_round(
        self,
        conn: Conn,
        now: float,
        calls: list[Call],
        pending: list[int],
        outcomes: dict[int, Outcome],
    ) -> list[int]:
        """一轮：取这些作业的行（本副本记得的直接用，其余一条批量读），逐个按规则判定，批量条件写；
        返回落空（或同一作业排在后面、或凭记住的行判为不写）的，下一轮重读再判。"""
        ids = list(dict.fromkeys(calls[i][1][0] for i in pending))
        rows, remembered = await self._current_rows(conn, ids)
        later: list[int] = []
        seen: set[str] = set()
        writes: list[tuple[int, Any, DictRow, dict[str, Any]]] = []
        for i in pending:
            method, args = calls[i]
            trace_id = args[0]
            if trace_id in seen:  # 同一作业的第二个操作：等前一个写完再判
                later.append(i)
                continue
            seen.add(trace_id)
            row = rows.get(trace_id)
            assert method in ROW_OPERATIONS, method
            step = getattr(self._decide, method)(row, now, *args[1:])
            if row is not None and step.columns is not None:
                writes.append((i, step, row, step.changes(row, now)))
            elif trace_id in remembered:
                # 不写的答复（租约已丢、已取消……）只凭库里的当前行给出：记住的行可能旧了
                self._memory.forget(trace_id)
                later.append(i)
            else:
                outcomes[i] = (True, step.reply)
        if writes:
            written = await batch_update(conn, [(row, changes) for _, _, row, changes in writes])
            for i, step, row, _ in writes:
                new = written.get(row["trace_id"])
                if new is None:
                    self._memory.forget(row["trace_id"])
                    later.append(i)
                else:
                    self._memory.remember(new)
                    outcomes[i] = (True, step.answer(new))
        return later

    async def _current_rows(
        self, conn: Conn, ids: list[str]
    ) -> tuple[dict[str, DictRow], set[str]]:
        """这些作业的行：本副本记得的（上次由它写成或读到）直接用，其余一条批量读并记住。
        记住的行若已被别人改过，条件写会落空，再从库里重读：所以它只省读，不会写错。"""
        rows = {t: self._memory.rows[t] for t in ids if t in self._memory.rows}
        remembered = set(rows)
        missing = [t for t in ids if t not in rows]
        if missing:
            cursor = await conn.execute("SELECT * FROM jobs WHERE trace_id = ANY(%b)", (missing,))
            fresh = await cursor.fetchall()
            rows |= {row["trace_id"]: row for row in fresh}
            self._memory.remember(*fresh)
        return rows, remembered

    async def _admit_batch(
        self,
        conn: Conn,
        now: float,
        calls: list[Call],
        indexes: list[int],
        outcomes: dict[int, Outcome],
    ) -> None:
        """受理：带幂等键的逐个走事务（咨询锁串行同一个键）；其余一起判限流、一条批量插入。"""
        plain: list[int] = []
        for i in indexes:
            job, owner, idempotency = calls[i][1]
            if idempotency is None:
                plain.append(i)
                continue
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (idempotency.scope_key,),
                )
                outcomes[i] = (True, await self._admit_keyed(conn, now, job, owner, idempotency))
        if plain:
            admits = [(calls[i][1][0], calls[i][1][1]) for i in plain]
            admitted = await self._admit_plain(conn, now, admits)
            outcomes |= {i: (True, a) for i, a in zip(plain, admitted, strict=True)}

    async def _admit_plain(
        self, conn: Conn, now: float, admits: list[tuple[ReportJob, str]]
    ) -> list[Admission]:
        """一批受理：一次计数判限流（rules.retry_after_s），一条批量插入；已存在的（调用方超时
        重试：第一次其实已写入）答已有的行。"""
        active, per_caller = await self._active_counts(conn)
        recent: int | None = None
        inserts: list[tuple[ReportJob, str]] = []
        refused: dict[str, int] = {}
        for job, owner in admits:
            mine = per_caller.get(job.caller, 0)
            # 先当最近吞吐为 0 问一次，超限了再去数最近产出（少一条查询）
            if rules.retry_after_s(active, 0, self._policy, mine) is None:
                inserts.append((job, owner))
                active += 1
                per_caller[job.caller] = mine + 1
                continue
            if recent is None:
                cursor = await conn.execute(
                    "SELECT count(*) AS n FROM jobs WHERE produced_at > %s",
                    (now - rules.RATE_WINDOW_S,),
                )
                counted = await cursor.fetchone()
                recent = int(counted["n"]) if counted is not None else 0
            retry_after = rules.retry_after_s(active, recent, self._policy, mine)
            assert retry_after is not None
            refused[job.trace_id] = retry_after
        inserted = await batch_insert(conn, now, inserts, self._decide.lease(now))
        self._memory.remember(*inserted.values())
        self._memory.remember_jobs([job for job, _ in inserts])
        missing = [job.trace_id for job, _ in admits if job.trace_id not in inserted]
        existing: dict[str, DictRow] = {}
        if missing:
            cursor = await conn.execute("SELECT * FROM jobs WHERE trace_id = ANY(%s)", (missing,))
            existing = {row["trace_id"]: row for row in await cursor.fetchall()}
        answers: list[Admission] = []
        for job, _ in admits:
            # 刚插入的行就是这个作业：不必把 job_json 再解析一遍
            if (fresh := inserted.get(job.trace_id)) is not None:
                answers.append(Admission(record=record_from_row(fresh, job)))
            elif (row := existing.get(job.trace_id)) is not None:
                answers.append(Admission(record=record_from_row(row)))
            else:
                answers.append(Admission(record=None, retry_after_s=refused[job.trace_id]))
        return answers

    async def heartbeat(self, owner: str, trace_ids: list[str]) -> HeartbeatReply:
        """续租（见 JobStore.heartbeat）：只延长租约，不改 version（不打断持有者自己的写入）。"""
        if not trace_ids:
            return HeartbeatReply()

        async def work(conn: Conn, now: float) -> HeartbeatReply:
            cursor = await conn.execute(
                "UPDATE jobs SET lease_until = %s WHERE owner = %s AND trace_id = ANY(%s)"
                " RETURNING trace_id, owner, cancel_requested, state",
                (self._decide.lease(now), owner, trace_ids),
            )
            return heartbeat_reply(owner, trace_ids, await cursor.fetchall())

        return await self._pool.run("heartbeat", work)

    async def claim_due(self, owner: str, limit: int) -> list[WorkItem]:
        """领取（见 JobStore.claim_due）：SKIP LOCKED，多个副本同时扫描互不阻塞、不重复领取。"""
        if limit <= 0:
            return []

        async def work(conn: Conn, now: float) -> list[WorkItem]:
            async with conn.transaction():
                cursor = await conn.execute(
                    "SELECT * FROM jobs WHERE (lease_until IS NULL OR lease_until < %s)"
                    " AND (state = ANY(%s) OR (cb_state = %s AND cb_next_attempt_at <= %s))"
                    f" ORDER BY {_CLAIM_ORDER} LIMIT %s FOR UPDATE SKIP LOCKED",
                    (now, _PRODUCING, str(CallbackState.PENDING), now, limit),
                )
                claims = [
                    (row, *self._decide.claim(row, now, owner)) for row in await cursor.fetchall()
                ]
                if not claims:
                    return []
                # 领到的行一条批量条件写；行已被本事务锁住，不会落空
                written = await batch_update(conn, [(row, changes) for row, changes, _ in claims])
            self._memory.remember(*written.values())
            return [
                WorkItem(record=record_from_row(written[row["trace_id"]]), produce=produce)
                for row, _, produce in claims
            ]

        return await self._pool.run("claim_due", work)

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

        await self._pool.run("release", work)

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """已放弃自动重投的作业。"""

        async def work(conn: Conn, _now: float) -> list[JobRecord]:
            cursor = await conn.execute(
                "SELECT * FROM jobs WHERE cb_state = %s ORDER BY updated_at DESC LIMIT %s",
                (str(CallbackState.UNDELIVERED), limit),
            )
            return [record_from_row(r) for r in await cursor.fetchall()]

        return await self._pool.run("list_undelivered", work)

    async def purge_finished(self, limit: int) -> int:
        """删掉超过保留期的已结束作业（小批，SKIP LOCKED 不挡别的写入）与过期的幂等键。"""

        async def work(conn: Conn, now: float) -> int:
            jobs_before, keys_before = rules.purge_cutoffs(now, self._policy)
            cursor = await conn.execute(
                "DELETE FROM jobs WHERE trace_id IN (SELECT trace_id FROM jobs"
                " WHERE cb_state = ANY(%s) AND updated_at < %s AND state = ANY(%s)"
                " LIMIT %s FOR UPDATE SKIP LOCKED)",
                (
                    [str(s) for s in rules.SETTLED_CALLBACKS],
                    jobs_before,
                    [str(s) for s in rules.FINISHED_STATES],
                    limit,
                ),
            )
            deleted = cursor.rowcount
            await conn.execute("DELETE FROM idempotency WHERE created_at < %s", (keys_before,))
            return deleted

        return await self._pool.run("purge_finished", work)

    async def counts(self) -> LedgerCounts:
        """当前的作业总数（见 JobStore.counts）。"""

        async def work(conn: Conn, _now: float) -> LedgerCounts:
            cursor = await conn.execute(COUNTS_SQL)
            row = await cursor.fetchone()
            assert row is not None
            return LedgerCounts.model_validate(dict(row))

        return await self._pool.run("counts", work)

    async def ping(self) -> None:
        """能取得连接并执行一条查询（健康检查用）。"""

        async def work(conn: Conn, _now: float) -> None:
            await conn.execute("SELECT 1")

        await self._pool.run("ping", work)

    async def close(self) -> None:
        """关闭连接池。"""
        await self._pool.close()
