"""账本的一行（SQLite 与 Postgres 的 jobs 表列相同）→ JobRecord，以及状态历史的追加。"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import TypeAdapter

from serve_app.core.settings import JobPolicy
from serve_app.ledger import rules
from serve_app.ledger.records import (
    PRODUCING_STATES,
    CallbackState,
    CallbackStatus,
    JobRecord,
    JobState,
    StateChange,
)
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob, webhook_id


class Row(Protocol):
    """一行：sqlite3.Row 或 psycopg 的 dict_row，都按列名取值。"""

    def __getitem__(self, key: str, /) -> Any: ...


def at(epoch: float) -> datetime:
    """epoch 秒 → UTC 时间。"""
    return datetime.fromtimestamp(epoch, UTC)


def maybe_at(epoch: float | None) -> datetime | None:
    """可空的 epoch 秒 → UTC 时间。"""
    return None if epoch is None else at(epoch)


# 状态历史：整段 JSON 一次校验（比逐条 model_validate 省一半）
_HISTORY = TypeAdapter(list[StateChange])


def record_from_row(
    row: Row, job: ReportJob | None = None, outcome: CallbackPayload | None = None
) -> JobRecord:
    """jobs 表的一行 → JobRecord。job / outcome：调用方手里已有这一行解析好的作业与结果时
    免去再解析一次（作业建立后不变；结果只在 finish 时写一次）。"""
    if outcome is None and row["outcome_json"]:
        outcome = CallbackPayload.model_validate_json(row["outcome_json"])
    return JobRecord(
        job=job if job is not None else ReportJob.model_validate_json(row["job_json"]),
        state=JobState(row["state"]),
        updated_at=at(row["updated_at"]),
        outcome=outcome,
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
        history=_HISTORY.validate_json(row["history_json"]),
    )


def _history_entry(state: JobState, when: datetime) -> str:
    """历史的一条（JSON；state_columns 按这个写法判断某一条是否已在历史里）。"""
    return json.dumps({"state": str(state), "at": when.astimezone(UTC).isoformat()})


@functools.lru_cache(maxsize=1)
def _first_history(now: float) -> str:
    # 一批受理共用同一个 now：历史的第一条只序列化一次
    return f"[{_history_entry(JobState.ACCEPTED, at(now))}]"


def new_job_columns(job: ReportJob, owner: str, now: float, lease_until: float) -> dict[str, Any]:
    """受理时插入的一行（两种存储的 INSERT 都按这里的列写）：受理状态、历史的第一条，
    由 owner 持有租约，第一次执行。"""
    history = _first_history(now)
    return {
        "trace_id": job.trace_id,
        "state": str(JobState.ACCEPTED),
        "job_json": job.model_dump_json(),
        "history_json": history,
        "created_at": now,
        "updated_at": now,
        "owner": owner,
        "lease_until": lease_until,
        "runs": 1,
        "cb_state": str(CallbackState.WAITING),
        "caller": job.caller,
    }


def state_columns(
    row: Row, state: JobState | None, now: float, passed: Sequence[StateChange] = ()
) -> dict[str, Any]:
    """状态变化要写的列（state 与追加了的 history_json）；没有变化时为空。

    passed：途经而没有单独写过的阶段（渲染、生成很快时不单为它们写账本，随下一次写入一起记），
    按各自的时刻依次排在新状态之前；最后一条与新状态是同一阶段时，它就是新状态的那一条。
    重新执行时（已在 generating）它们照样追加，历史里看得到第二次执行；历史里已有的条目（同一次
    写入被句柄整批重试）不再追加，写入保持幂等。新状态的时刻不早于途经阶段（入口与账本不在一台
    机器、时钟有偏差时历史也不倒序）。"""
    if state is None:
        return {}
    # 历史是本模块写下的 JSON 数组（至少有受理那一条）：在结尾的 "]" 前接上新的条目，
    # 不必整段解析再序列化
    history: str = row["history_json"]
    entries: list[str] = []
    current, latest = JobState(row["state"]), at(now)
    for change in passed:
        entry = _history_entry(change.state, change.at)
        if entry not in history:
            entries.append(entry)
            current, latest = change.state, max(latest, change.at)
    if state != current:
        entries.append(_history_entry(state, latest))
    if not entries:
        return {}
    return {"state": str(state), "history_json": f"{history[:-1]}, {', '.join(entries)}]"}


def delivery_columns(
    row: Row,
    now: float,
    result: DeliveryOutcome,
    policy: JobPolicy,
    outcome: CallbackPayload | None = None,
) -> tuple[dict[str, Any], JobState | None]:
    """一轮投递要写的列与新状态（两种存储共用）：送达即终态；否则按重投表安排下一次，
    超过期限或不可重试即 undelivered（见 rules.plan_redelivery）。租约一并释放。
    outcome：这一行已解析的结果（不给则从 outcome_json 解析）。"""
    if outcome is None:
        outcome = CallbackPayload.model_validate_json(row["outcome_json"])
    final = rules.state_after_delivery(outcome)
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
        return columns, final
    plan = rules.plan_redelivery(
        now=now,
        first_failed_at=row["cb_first_failed_at"],
        rounds=row["cb_rounds"],
        permanent=result.permanent,
        policy=policy,
    )
    columns |= {
        "cb_first_failed_at": plan.first_failed_at,
        "cb_rounds": plan.rounds,
        "cb_state": str(plan.callback_state),
        "cb_next_attempt_at": plan.next_attempt_at,
    }
    # 仍在重投时状态保持不变（delivering；对已终态作业的手动重投保持终态）
    return columns, final if plan.undelivered else None


# 尚未结束的作业：结果未产生，或正在投递
_ACTIVE_STATES = ", ".join(
    f"'{s}'" for s in sorted(str(s) for s in (*PRODUCING_STATES, JobState.DELIVERING))
)
# 仪表用的三个总数（两种数据库同一条 SQL；各自走 state 与 cb_state 的索引）。
# 常量都来自枚举，不含外部输入
COUNTS_SQL = (
    f"SELECT (SELECT count(*) FROM jobs WHERE state IN ({_ACTIVE_STATES})) AS active,"
    f" (SELECT count(*) FROM jobs WHERE cb_state = '{CallbackState.PENDING}' AND cb_rounds > 0)"
    " AS pending_redeliveries,"
    f" (SELECT count(*) FROM jobs WHERE cb_state = '{CallbackState.UNDELIVERED}') AS undelivered"
)
