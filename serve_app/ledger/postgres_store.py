"""Postgres 账本：每个入口副本经自己的连接池直连数据库（没有单个 actor 在每个作业的路径上）。

- 判定一律调 rules.py（与 SQLite 账本相同）；这里只管持久化。
- 读 → 判定 → 写：写入以读到的 `version` 未变为条件（乐观并发）。租约被别的副本接手、取消登记、
  交还租约都会让 version 加一，于是失去租约的副本的写入落空，重读后由规则判定为“租约已丢”。
- 组提交：作业路径上的操作（受理、推进、结果、投递、取消、重投）经 CallBatcher 合批，一批只用
  一条批量读与一条批量条件写（unnest），每条语句一次提交；落空的重读再判。
- 副本记住自己最近写成的行：同一作业的下一次操作直接以它判定、以它的 version 为条件写，不必先读；
  别人改过（取消、接手、交还）则条件写落空，重读再判，所以只省读，不会写错。
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
from dataclasses import dataclass
from typing import Any, cast

from loguru import logger
from psycopg import AsyncConnection, OperationalError
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
from serve_app.ledger.call_batcher import Call, CallBatcher, Outcome
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
from serve_app.ledger.rows import (
    COUNTS_SQL,
    at,
    delivery_columns,
    record_from_row,
    state_columns,
)
from serve_app.ledger.rules import AdvanceResult
from serve_app.ledger.store import HeartbeatReply, IdempotencyKey, LedgerCounts
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

Conn = AsyncConnection[DictRow]
_PRODUCING = [str(s) for s in PRODUCING_STATES]
_ROW_BY_ID = "SELECT * FROM jobs WHERE trace_id = %s"
# 每个副本记住的行数上限（它正在处理的作业的最新行，省掉每次操作前的读；约几 KB 一行）
_REMEMBERED_ROWS = 4096
_SETTLED = frozenset(str(s) for s in rules.SETTLED_CALLBACKS)
_FINISHED = frozenset(str(s) for s in rules.FINISHED_STATES)
# 乐观并发的重读轮数：只有同一作业上同时有别的写入（或同一批里排在后面）才会重读
_CAS_ATTEMPTS = 8
# 连接断开、池里拿不到连接：可重试；用尽即账本不可用
_TRANSIENT = (OperationalError, PoolTimeout, TimeoutError)


# 除 trace_id / version / 建立时就定了的列以外，一次写入可能改动的列与它们的类型（批量写用 unnest）
_MUTABLE: dict[str, str] = {
    "state": "text",
    "history_json": "text",
    "outcome_json": "text",
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
}


@functools.cache
def _batch_update_query(names: tuple[str, ...], partial: tuple[str, ...]) -> bytes:
    """批量条件写：只写这一批改动到的列（按列组合一次）；每行以读到的 version 为条件，落空的行
    不在 RETURNING 里。partial：只有部分行改动的列，没改它的行保留库里的当前值（而不是写回读到的
    旧值：续租只改 lease_until、不加 version，读到的 lease_until 可能已经旧了）。
    数组参数用二进制格式（%b）：文本格式要逐个元素转义。"""
    assignments = [
        f"{name} = CASE WHEN v.set_{name} THEN v.{name} ELSE j.{name} END"
        if name in partial
        else f"{name} = v.{name}"
        for name in names
    ]
    return (
        "UPDATE jobs AS j SET "
        + ", ".join(assignments)
        + ", version = j.version + 1 FROM unnest(%b::text[], %b::int8[], "
        + ", ".join([f"%b::{_MUTABLE[name]}[]" for name in names] + ["%b::bool[]"] * len(partial))
        + ") AS v(trace_id, version, "
        + ", ".join([*names, *(f"set_{name}" for name in partial)])
        + ") WHERE j.trace_id = v.trace_id AND j.version = v.version RETURNING j.trace_id"
    ).encode()


_BATCH_INSERT = (
    b"INSERT INTO jobs (trace_id, state, job_json, history_json, created_at, updated_at, owner,"
    b" lease_until, runs, cb_state, caller)"
    b" SELECT t, s, j, h, c, c, o, l, 1, cb, cl FROM unnest(%b::text[], %b::text[], %b::text[],"
    b" %b::text[], %b::float8[], %b::text[], %b::float8[], %b::text[], %b::text[])"
    b" AS v(t, s, j, h, c, o, l, cb, cl)"
    b" ON CONFLICT (trace_id) DO NOTHING RETURNING *"
)


@dataclass(frozen=True)
class _Step:
    """规则对一行的判定：不写（reply 即答复），或写这些列（答复由写成后的行算出）。"""

    reply: Any = None
    columns: dict[str, Any] | None = None
    state: JobState | None = None
    written: Callable[[DictRow], Any] | None = None


def _changes(row: DictRow, now: float, step: _Step) -> dict[str, Any]:
    """按判定算出这次写入改动的列（含 updated_at 与状态变化）。"""
    assert step.columns is not None
    return step.columns | {"updated_at": now} | state_columns(row, step.state, now)


async def _batch_update(
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
    cursor = await conn.execute(_batch_update_query(names, partial), params)
    done = {written["trace_id"] for written in await cursor.fetchall()}
    return {
        row["trace_id"]: cast(DictRow, row | changes | {"version": row["version"] + 1})
        for row, changes in writes
        if row["trace_id"] in done
    }


async def _batch_insert(
    conn: Conn, now: float, admits: list[tuple[Any, ...]], lease_until: float
) -> dict[str, DictRow]:
    """一条语句插入一批新作业（已存在的跳过）；返回插进去的行。"""
    if not admits:
        return {}
    history = json.dumps([{"state": str(JobState.ACCEPTED), "at": at(now).isoformat()}])
    jobs: list[ReportJob] = [job for job, _, _ in admits]
    params = [
        [job.trace_id for job in jobs],
        [str(JobState.ACCEPTED)] * len(jobs),
        [job.model_dump_json() for job in jobs],
        [history] * len(jobs),
        [now] * len(jobs),
        [owner for _, owner, _ in admits],
        [lease_until] * len(jobs),
        [str(CallbackState.WAITING)] * len(jobs),
        [job.caller for job in jobs],
    ]
    cursor = await conn.execute(_BATCH_INSERT, params)
    return {row["trace_id"]: row for row in await cursor.fetchall()}


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
        # 本副本最近写成或读到的行（trace_id → 行）：作业路径上的下一次操作直接拿它判定、以它的
        # version 为条件写，省掉一次批量读（见 _current_rows）
        self._rows: dict[str, DictRow] = {}
        # 记住的行的作业（解析好的；job_json 建立后不变），与 _rows 一起记、一起忘
        self._jobs: dict[str, ReportJob] = {}
        self._batcher = CallBatcher(self._apply, max_in_flight=4, max_batch=256)
        self._deciders: dict[str, Callable[..., _Step]] = {
            "advance": self._decide_advance,
            "finish": self._decide_finish,
            "record_delivery": self._decide_record_delivery,
            "request_cancel": self._decide_request_cancel,
            "redeliver": self._decide_redeliver,
        }

    @property
    def batcher(self) -> CallBatcher:
        """合批统计（测试与基准读它）。"""
        return self._batcher

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
            retry=retry_if_exception_type(_TRANSIENT),
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
        except _TRANSIENT as exc:
            logger.opt(exception=exc).warning("Postgres 账本调用失败：{}", name)
            raise LedgerUnavailable(f"作业账本暂不可用（{name}）") from exc
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    @staticmethod
    async def _row(conn: Conn, trace_id: str) -> DictRow | None:
        cursor = await conn.execute(_ROW_BY_ID, (trace_id,))
        return await cursor.fetchone()

    def _lease(self, now: float) -> float:
        return rules.lease_until(now, self._policy)

    # ---- JobStore ----

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
        retry_after = await self._overload_retry_after(conn, now, job.caller)
        if retry_after is not None:
            existing = await self._row(conn, job.trace_id)
            if existing is not None:
                return Admission(record=record_from_row(existing))
            return Admission(record=None, retry_after_s=retry_after)
        history = json.dumps([{"state": str(JobState.ACCEPTED), "at": at(now).isoformat()}])
        cursor = await conn.execute(
            "INSERT INTO jobs (trace_id, state, job_json, history_json, created_at,"
            " updated_at, owner, lease_until, runs, cb_state, caller)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s)"
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
                job.caller,
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

    async def _overload_retry_after(self, conn: Conn, now: float, caller: str) -> int | None:
        """全局或这个调用方的未完成作业到了上限时返回建议的 Retry-After（rules.retry_after_s）。"""
        active, per_caller = await self._active_counts(conn)
        mine = per_caller.get(caller, 0)
        if rules.retry_after_s(active, 0, self._policy, mine) is None:
            return None
        recent = await self._count_with(
            conn, "SELECT count(*) AS n FROM jobs WHERE produced_at > %s", now - rules.RATE_WINDOW_S
        )
        return rules.retry_after_s(active, recent, self._policy, mine)

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

        return await self._run("get", work)

    @staticmethod
    def _outcome_columns(now: float, outcome: CallbackPayload) -> dict[str, Any]:
        return {
            "outcome_json": outcome.model_dump_json(),
            "produced_at": now,
            "cb_state": str(CallbackState.PENDING),
            "cb_next_attempt_at": now,
        }

    # ---- 作业路径上的操作：合批执行 ----

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """受理（见 JobStore.admit）。带 Idempotency-Key 的在事务里由咨询锁串行同一个键。"""
        return cast(Admission, await self._batcher.call("admit", job, owner, idempotency))

    async def advance(self, trace_id: str, owner: str, state: JobState) -> AdvanceResult:
        """进入 rendering / generating。"""
        return cast(AdvanceResult, await self._batcher.call("advance", trace_id, owner, state))

    async def finish(
        self, trace_id: str, owner: str, outcome: CallbackPayload
    ) -> CallbackPayload | None:
        """记录结果（见 JobStore.finish）。"""
        result = await self._batcher.call("finish", trace_id, owner, outcome)
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

        return await self._run("batch", work)

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
        writes: list[tuple[int, _Step, DictRow, dict[str, Any]]] = []
        for i in pending:
            method, args = calls[i]
            trace_id = args[0]
            if trace_id in seen:  # 同一作业的第二个操作：等前一个写完再判
                later.append(i)
                continue
            seen.add(trace_id)
            row = rows.get(trace_id)
            step = self._deciders[method](row, now, *args[1:])
            if row is not None and step.columns is not None:
                writes.append((i, step, row, _changes(row, now, step)))
            elif trace_id in remembered:
                # 不写的答复（租约已丢、已取消……）只凭库里的当前行给出：记住的行可能旧了
                self._forget(trace_id)
                later.append(i)
            else:
                outcomes[i] = (True, step.reply)
        if writes:
            written = await _batch_update(conn, [(row, changes) for _, _, row, changes in writes])
            for i, step, row, _ in writes:
                new = written.get(row["trace_id"])
                if new is None:
                    self._forget(row["trace_id"])
                    later.append(i)
                else:
                    self._remember(new)
                    assert step.written is not None
                    outcomes[i] = (True, step.written(new))
        return later

    async def _current_rows(
        self, conn: Conn, ids: list[str]
    ) -> tuple[dict[str, DictRow], set[str]]:
        """这些作业的行：本副本记得的（上次由它写成或读到）直接用，其余一条批量读并记住。
        记住的行若已被别人改过，条件写会落空，再从库里重读：所以它只省读，不会写错。"""
        rows = {t: self._rows[t] for t in ids if t in self._rows}
        remembered = set(rows)
        missing = [t for t in ids if t not in rows]
        if missing:
            cursor = await conn.execute("SELECT * FROM jobs WHERE trace_id = ANY(%b)", (missing,))
            fresh = await cursor.fetchall()
            rows |= {row["trace_id"]: row for row in fresh}
            self._remember(*fresh)
        return rows, remembered

    def _remember(self, *rows: DictRow) -> None:
        """记住这些行的最新版本（最近用到的排在最后）；结束了的作业不再记，超过上限时忘掉最久没用的。"""
        for row in rows:
            trace_id = row["trace_id"]
            if row["cb_state"] in _SETTLED and row["state"] in _FINISHED:
                self._forget(trace_id)
                continue
            self._rows.pop(trace_id, None)
            self._rows[trace_id] = row
            if len(self._rows) > _REMEMBERED_ROWS:
                self._forget(next(iter(self._rows)))

    def _forget(self, trace_id: str) -> None:
        """忘掉一个作业记住的行与作业（两者一起，不留下没有行的作业）。"""
        self._rows.pop(trace_id, None)
        self._jobs.pop(trace_id, None)

    def _job_of(self, row: DictRow) -> ReportJob:
        """这一行的作业：记住了就直接用，否则解析 job_json（并记住，行还记着时）。"""
        trace_id = row["trace_id"]
        job = self._jobs.get(trace_id)
        if job is None:
            job = ReportJob.model_validate_json(row["job_json"])
            if trace_id in self._rows:
                self._jobs[trace_id] = job
        return job

    async def _admit_batch(
        self,
        conn: Conn,
        now: float,
        calls: list[Call],
        indexes: list[int],
        outcomes: dict[int, Outcome],
    ) -> None:
        """受理：带幂等键的逐个走事务；其余按一次计数判限流，一条批量插入。"""
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
                outcomes[i] = (True, await self._admit(conn, now, job, owner, idempotency))
        if not plain:
            return
        active, per_caller = await self._active_counts(conn)
        recent: int | None = None
        inserts: list[int] = []
        refused: dict[int, int] = {}
        for i in plain:
            caller = calls[i][1][0].caller
            mine = per_caller.get(caller, 0)
            # 限流按规则判：先当最近吞吐为 0 问一次，超限了再去数最近产出（少一条查询）
            if rules.retry_after_s(active, 0, self._policy, mine) is None:
                inserts.append(i)
                active += 1
                per_caller[caller] = mine + 1
                continue
            if recent is None:
                recent = await self._count_with(
                    conn,
                    "SELECT count(*) AS n FROM jobs WHERE produced_at > %s",
                    now - rules.RATE_WINDOW_S,
                )
            retry_after = rules.retry_after_s(active, recent, self._policy, mine)
            assert retry_after is not None
            refused[i] = retry_after
        inserted = await _batch_insert(conn, now, [calls[i][1] for i in inserts], self._lease(now))
        self._remember(*inserted.values())
        self._jobs |= {job.trace_id: job for job, _, _ in (calls[i][1] for i in inserts)}
        # 没插进去的（同一 trace_id 已在：调用方超时重试）与被限流的，看是否已存在
        missing = [
            calls[i][1][0].trace_id for i in plain if calls[i][1][0].trace_id not in inserted
        ]
        existing: dict[str, DictRow] = {}
        if missing:
            cursor = await conn.execute("SELECT * FROM jobs WHERE trace_id = ANY(%s)", (missing,))
            existing = {row["trace_id"]: row for row in await cursor.fetchall()}
        for i in plain:
            job = calls[i][1][0]
            # 刚插入的行就是这个作业：不必把 job_json 再解析一遍
            fresh = inserted.get(job.trace_id)
            row = fresh or existing.get(job.trace_id)
            if row is not None:
                outcomes[i] = (True, Admission(record=record_from_row(row, job if fresh else None)))
            else:
                outcomes[i] = (True, Admission(record=None, retry_after_s=refused[i]))

    async def _count_with(self, conn: Conn, query: str, value: object) -> int:
        cursor = await conn.execute(query.encode(), (value,))
        counted = await cursor.fetchone()
        return int(counted["n"]) if counted is not None else 0

    # ---- 规则判定（纯：一行 → 写什么、答什么） ----

    def _decide_advance(
        self, row: DictRow | None, now: float, owner: str, state: JobState
    ) -> _Step:
        if row is None:
            return _Step(reply="lost")
        verdict = rules.advance_verdict(
            row["state"], row["owner"], owner, bool(row["cancel_requested"])
        )
        if verdict != "ok":
            return _Step(reply=verdict)
        return _Step(
            columns={"lease_until": self._lease(now)}, state=state, written=lambda _row: "ok"
        )

    def _decide_finish(
        self, row: DictRow | None, now: float, owner: str, outcome: CallbackPayload
    ) -> _Step:
        if row is None:
            return _Step(reply=None)
        if rules.finish_replayed(row["state"], row["owner"], owner) and row["outcome_json"]:
            return _Step(reply=CallbackPayload.model_validate_json(row["outcome_json"]))
        if not rules.holds_production(row["state"], row["owner"], owner):
            return _Step(reply=None)
        final = rules.final_outcome(self._job_of(row), outcome, bool(row["cancel_requested"]))
        columns = self._outcome_columns(now, final) | {"lease_until": self._lease(now)}
        return _Step(columns=columns, state=JobState.DELIVERING, written=lambda _row: final)

    def _decide_record_delivery(
        self, row: DictRow | None, now: float, owner: str, result: DeliveryOutcome
    ) -> _Step:
        if row is None or row["outcome_json"] is None:
            return _Step(reply=None)
        if not rules.holds_delivery(row["owner"], owner):
            return _Step(reply=None)
        # 结果与作业各解析一次：判定与答复的记录共用（投递不改这两列）
        outcome = CallbackPayload.model_validate_json(row["outcome_json"])
        columns, state = delivery_columns(row, now, result, self._policy, outcome)
        job = self._job_of(row)
        return _Step(
            columns=columns,
            state=state,
            written=lambda new: record_from_row(new, job, outcome),
        )

    @staticmethod
    def _decide_request_cancel(row: DictRow | None, _now: float) -> _Step:
        if row is None:
            return _Step(reply=CancelResult(record=None, accepted=False))
        if not rules.is_producing(row["state"]):
            return _Step(reply=CancelResult(record=record_from_row(row), accepted=False))
        return _Step(
            columns={"cancel_requested": 1},
            written=lambda new: CancelResult(record=record_from_row(new), accepted=True),
        )

    @staticmethod
    def _decide_redeliver(row: DictRow | None, now: float) -> _Step:
        if row is None:
            return _Step(reply=None)
        if row["outcome_json"] is None:
            return _Step(reply=record_from_row(row))
        columns: dict[str, Any] = {
            "cb_state": str(CallbackState.PENDING),
            "cb_next_attempt_at": now,
            "cb_first_failed_at": None,
            "cb_rounds": 0,
        }
        return _Step(columns=columns, written=record_from_row)

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
                claims = [(row, *self._claim(row, now, owner)) for row in await cursor.fetchall()]
                if not claims:
                    return []
                # 领到的行一条批量条件写；行已被本事务锁住，不会落空
                written = await _batch_update(conn, [(row, changes) for row, changes, _ in claims])
            self._remember(*written.values())
            return [
                WorkItem(record=record_from_row(written[row["trace_id"]]), produce=produce)
                for row, _, produce in claims
            ]

        return await self._run("claim_due", work)

    def _claim(self, row: DictRow, now: float, owner: str) -> tuple[dict[str, Any], bool]:
        """领取一行要写的列（新租约；该直接结束的连同结果）与是否要重新执行。"""
        changes: dict[str, Any] = {
            "owner": owner,
            "lease_until": self._lease(now),
            "updated_at": now,
        }
        if not rules.is_producing(row["state"]):
            return changes, False
        ended = rules.recovery_outcome(
            ReportJob.model_validate_json(row["job_json"]),
            row["runs"],
            bool(row["cancel_requested"]),
            self._policy,
        )
        if ended is None:
            return changes | {"runs": row["runs"] + 1}, True
        delivering = state_columns(row, JobState.DELIVERING, now)
        return changes | self._outcome_columns(now, ended) | delivering, False

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

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """已放弃自动重投的作业。"""

        async def work(conn: Conn, _now: float) -> list[JobRecord]:
            cursor = await conn.execute(
                "SELECT * FROM jobs WHERE cb_state = %s ORDER BY updated_at DESC LIMIT %s",
                (str(CallbackState.UNDELIVERED), limit),
            )
            return [record_from_row(r) for r in await cursor.fetchall()]

        return await self._run("list_undelivered", work)

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

        return await self._run("purge_finished", work)

    async def counts(self) -> LedgerCounts:
        """当前的作业总数（见 JobStore.counts）。"""

        async def work(conn: Conn, _now: float) -> LedgerCounts:
            cursor = await conn.execute(COUNTS_SQL)
            row = await cursor.fetchone()
            assert row is not None
            return LedgerCounts.model_validate(dict(row))

        return await self._run("counts", work)

    async def ping(self) -> None:
        """能取得连接并执行一条查询（健康检查用）。"""

        async def work(conn: Conn, _now: float) -> None:
            await conn.execute("SELECT 1")

        await self._run("ping", work)

    async def close(self) -> None:
        """关闭连接池。"""
        await self._pool.close()
