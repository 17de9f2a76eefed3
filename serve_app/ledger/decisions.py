"""账本操作的判定层（纯：读到的一行 → 写什么、答什么），SQLite 与 Postgres 两种存储共用。

每个存储只管读、写与合批：读出作业的当前行，交给这里的判定，照 Step 写（或不写），
再用写成后的行算出答复。业务规则本身（状态推进、取消覆盖、重投表……）在 rules.py；
这里把规则落到“改哪几列”上，一个操作只写一次。
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.core.settings import JobPolicy
from serve_app.ledger import rules
from serve_app.ledger.records import (
    Admission,
    CallbackState,
    CancelResult,
    JobState,
    StateChange,
)
from serve_app.ledger.rows import Row, delivery_columns, record_from_row, state_columns
from serve_app.ledger.store import HeartbeatReply, IdempotencyKey
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

# 行级判定的操作（存储按名字调 Decisions 的同名方法；其余操作是整表的读写，没有行级判定）
ROW_OPERATIONS = ("advance", "finish", "record_delivery", "request_cancel", "redeliver")


@dataclass(frozen=True)
class Step:
    """对一行的判定：不写（reply 即答复），或写这些列：答复由 written(写成后的行) 算出；
    答复与写成后的行无关时 written 为空、答 reply（存储就不必在写后重读这一行）。"""

    reply: Any = None
    columns: dict[str, Any] | None = None
    state: JobState | None = None
    written: Callable[[Row], Any] | None = None
    passed: tuple[StateChange, ...] = ()

    def changes(self, row: Row, now: float) -> dict[str, Any]:
        """这次写入改动的全部列（含 updated_at；状态变化时连同追加了的历史）。"""
        assert self.columns is not None
        return self.columns | {"updated_at": now} | state_columns(row, self.state, now, self.passed)

    @property
    def needs_row(self) -> bool:
        """写成之后的答复要用写成的行。"""
        return self.written is not None

    def answer(self, written: Row) -> Any:
        """写成之后的答复。"""
        return self.reply if self.written is None else self.written(written)


def parse_job(row: Row) -> ReportJob:
    """这一行的作业（job_json 建立后不变：存储可以缓存解析结果，换成自己的 job_of）。"""
    return ReportJob.model_validate_json(row["job_json"])


def outcome_columns(now: float, outcome: CallbackPayload) -> dict[str, Any]:
    """记录结果要写的列：结果本身，与一次立即的投递。"""
    return {
        "outcome_json": outcome.model_dump_json(),
        "produced_at": now,
        "cb_state": str(CallbackState.PENDING),
        "cb_next_attempt_at": now,
    }


def replay_decision(hit: Row | None, key: IdempotencyKey) -> tuple[Admission | None, str | None]:
    """幂等键查到的记录 → (直接答复, 要重放的 trace_id)：没查到两者皆空；请求体不同是冲突；
    相同则重放第一次受理的作业（存储读出它的行，标 replayed）。"""
    if hit is None:
        return None, None
    if hit["body_hash"] != key.body_hash:
        return Admission(record=None, conflict_trace_id=hit["trace_id"]), None
    return None, hit["trace_id"]


def heartbeat_reply(owner: str, trace_ids: list[str], rows: Sequence[Row]) -> HeartbeatReply:
    """续租之后读到的行 → 要取消的作业（仍在生产、已登记取消）与已不归 owner 的作业。"""
    owned = {r["trace_id"]: r for r in rows if r["owner"] == owner}
    return HeartbeatReply(
        cancel=[
            t for t, r in owned.items() if r["cancel_requested"] and rules.is_producing(r["state"])
        ],
        lost=[t for t in trace_ids if t not in owned],
    )


class Decisions:
    """每个行级操作的判定。job_of：从一行取作业（Postgres 存储传入带缓存的版本）。"""

    def __init__(self, policy: JobPolicy, job_of: Callable[[Row], ReportJob] = parse_job) -> None:
        self._policy = policy
        self._job_of = job_of

    def lease(self, now: float) -> float:
        """从 now 起的租约到期时间。"""
        return rules.lease_until(now, self._policy)

    def advance(
        self,
        row: Row | None,
        now: float,
        owner: str,
        state: JobState,
        passed: tuple[StateChange, ...] = (),
    ) -> Step:
        """进入下一个生成阶段：已请求取消答 cancelled，租约已丢答 lost。passed 是途经而没有
        单独写过的阶段（见 rows.state_columns），与 state 一起记进历史。"""
        if row is None:
            return Step(reply="lost")
        verdict = rules.advance_verdict(
            row["state"], row["owner"], owner, bool(row["cancel_requested"])
        )
        if verdict != "ok":
            return Step(reply=verdict)
        return Step(
            columns={"lease_until": self.lease(now)}, state=state, reply="ok", passed=passed
        )

    def finish(
        self,
        row: Row | None,
        now: float,
        owner: str,
        outcome: CallbackPayload,
        passed: tuple[StateChange, ...] = (),
    ) -> Step:
        """记录结果并进入 delivering：已登记取消时结果改为 cancelled；owner 的重试答已记的结果。
        passed 同 advance：很快做完、没有单独写下的渲染与生成，随结果一起记进历史。"""
        if row is None:
            return Step(reply=None)
        if rules.finish_replayed(row["state"], row["owner"], owner) and row["outcome_json"]:
            return Step(reply=CallbackPayload.model_validate_json(row["outcome_json"]))
        if not rules.holds_production(row["state"], row["owner"], owner):
            return Step(reply=None)
        final = rules.final_outcome(self._job_of(row), outcome, bool(row["cancel_requested"]))
        columns = outcome_columns(now, final) | {"lease_until": self.lease(now)}
        return Step(columns=columns, state=JobState.DELIVERING, reply=final, passed=passed)

    def record_delivery(
        self, row: Row | None, now: float, owner: str, result: DeliveryOutcome
    ) -> Step:
        """记录一轮投递：只有仍持有租约的 owner 能记（见 rows.delivery_columns）。"""
        if row is None or row["outcome_json"] is None:
            return Step(reply=None)
        if not rules.holds_delivery(row["owner"], owner):
            return Step(reply=None)
        # 结果与作业各解析一次：判定与答复的记录共用（投递不改这两列）
        outcome = CallbackPayload.model_validate_json(row["outcome_json"])
        columns, state = delivery_columns(row, now, result, self._policy, outcome)
        job = self._job_of(row)
        return Step(
            columns=columns, state=state, written=lambda new: record_from_row(new, job, outcome)
        )

    @staticmethod
    def request_cancel(row: Row | None, _now: float) -> Step:
        """登记取消：只有尚未产生结果的作业可以取消。"""
        if row is None:
            return Step(reply=CancelResult(record=None, accepted=False))
        if not rules.is_producing(row["state"]):
            return Step(reply=CancelResult(record=record_from_row(row), accepted=False))
        return Step(
            columns={"cancel_requested": 1},
            written=lambda new: CancelResult(record=record_from_row(new), accepted=True),
        )

    @staticmethod
    def redeliver(row: Row | None, now: float) -> Step:
        """已有结果的作业：重新安排立即投递，重投表从头算（webhook-id 不变）。"""
        if row is None:
            return Step(reply=None)
        if row["outcome_json"] is None:
            return Step(reply=record_from_row(row))
        columns: dict[str, Any] = {
            "cb_state": str(CallbackState.PENDING),
            "cb_next_attempt_at": now,
            "cb_first_failed_at": None,
            "cb_rounds": 0,
        }
        return Step(columns=columns, written=record_from_row)

    def claim(self, row: Row, now: float, owner: str) -> tuple[dict[str, Any], bool]:
        """领取一个租约过期或到期重投的作业 → (要写的全部列, 是否重新执行)。

        尚在生产的：已登记取消或失联次数到了上限就直接以结果结束（进入投递），否则执行次数加一。
        """
        changes: dict[str, Any] = {
            "owner": owner,
            "lease_until": self.lease(now),
            "updated_at": now,
        }
        if not rules.is_producing(row["state"]):
            return changes, False
        ended = rules.recovery_outcome(
            self._job_of(row), row["runs"], bool(row["cancel_requested"]), self._policy, now
        )
        if ended is None:
            return changes | {"runs": row["runs"] + 1}, True
        delivering = state_columns(row, JobState.DELIVERING, now)
        return changes | outcome_columns(now, ended) | delivering, False
