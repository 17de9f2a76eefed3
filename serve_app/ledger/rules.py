"""账本的规则（纯函数，不碰存储）：状态推进、取消覆盖、失联放弃、重投表、Retry-After 估算。

两种存储（SQLite、Postgres）都不直接调这里：decisions.py 把这些规则落到“改哪几列”上，
存储只管读、写与合批，换存储不必复制业务规则。
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from serve_app.core.errors import ErrorCode
from serve_app.core.settings import JobPolicy
from serve_app.ledger.records import PRODUCING_STATES, CallbackState, JobState
from serve_app.models.reports import PRIORITY_RANK, CallbackPayload, ReportJob

AdvanceResult = Literal["ok", "cancelled", "lost"]

# 估算 Retry-After 用的吞吐窗口（秒）
RATE_WINDOW_S = 60.0
DEFAULT_RETRY_AFTER_S = 5
MAX_RETRY_AFTER_S = 60


def is_producing(state: JobState | str) -> bool:
    """结果尚未产生（可取消；副本失联后需重新执行）。"""
    return state in PRODUCING_STATES


def lease_until(now: float, policy: JobPolicy) -> float:
    """从 now 起的租约到期时间。"""
    return now + policy.lease_s


def holds_production(state: JobState | str, holder: str | None, owner: str) -> bool:
    """owner 仍持有一个尚在生产的作业（可推进阶段、可记录结果）。"""
    return holder == owner and is_producing(state)


def holds_delivery(holder: str | None, owner: str) -> bool:
    """owner 仍持有这个作业的投递。租约已归别人的副本不能记录投递（新主人会再投一次，
    webhook-id 不变）。"""
    return holder == owner


def finish_replayed(state: JobState | str, holder: str | None, owner: str) -> bool:
    """owner 已为这个作业记录过结果（finish 的超时重试）：应返回已记录的结果而不是当作租约已丢。"""
    return holder == owner and state == JobState.DELIVERING


def advance_verdict(
    state: JobState | str, holder: str | None, owner: str, cancel_requested: bool
) -> AdvanceResult:
    """进入下一个生成阶段之前的判定。"""
    if not holds_production(state, holder, owner):
        return "lost"
    return "cancelled" if cancel_requested else "ok"


def final_outcome(
    job: ReportJob, outcome: CallbackPayload, cancel_requested: bool
) -> CallbackPayload:
    """取消覆盖：已登记取消的作业，无论结果如何都以 cancelled 结束。"""
    if cancel_requested and outcome.status != "cancelled":
        return CallbackPayload.cancelled(job)
    return outcome


def recovery_outcome(
    job: ReportJob, runs: int, cancel_requested: bool, policy: JobPolicy, now: float
) -> CallbackPayload | None:
    """领取一个租约过期、尚在生产的作业时：该直接结束就给出结果，否则 None（重新执行）。
    期限已过的不再开始（重启、接手之后也一样）。"""
    if cancel_requested:
        return CallbackPayload.cancelled(job)
    if job.expired_at(datetime.fromtimestamp(now, UTC)):
        return CallbackPayload.expired(job)
    if runs >= policy.max_runs:
        return CallbackPayload.failed(
            job, ErrorCode.WORKER_LOST, f"执行作业的副本失联 {runs} 次，已放弃"
        )
    return None


def claim_order_sql(priority_expr: str) -> str:
    """领取的次序（两种存储的 ORDER BY）：high 先于 normal 先于 low，同级里等得久的先。
    priority_expr 是该存储从 job_json 里取 priority 的表达式（旧作业没有这个字段，算 normal）。"""
    ranks = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in PRIORITY_RANK.items())
    return f"CASE {priority_expr} {ranks} ELSE {PRIORITY_RANK['normal']} END, updated_at"


# 已结束：终态，且回调不再待投（送达或已放弃）。只有这样的作业会被保留期清除
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED)
SETTLED_CALLBACKS = (CallbackState.DELIVERED, CallbackState.UNDELIVERED)


def purge_cutoffs(now: float, policy: JobPolicy) -> tuple[float, float]:
    """(作业清除线, 幂等键清除线)：最后更新早于前者的已结束作业、早于后者的幂等键可以删。"""
    return now - policy.retention_days * 86400, now - policy.idempotency_ttl_s


def state_after_delivery(outcome: CallbackPayload) -> JobState:
    """结果回调对应的终态。"""
    return JobState(outcome.status)


@dataclass(frozen=True)
class RedeliveryPlan:
    """一轮投递失败后的安排：`undelivered` 为真即放弃自动重投。"""

    callback_state: CallbackState
    next_attempt_at: float | None
    first_failed_at: float
    rounds: int

    @property
    def undelivered(self) -> bool:
        """已放弃自动重投。"""
        return self.callback_state is CallbackState.UNDELIVERED


def plan_redelivery(
    *,
    now: float,
    first_failed_at: float | None,
    rounds: int,
    permanent: bool,
    policy: JobPolicy,
) -> RedeliveryPlan:
    """按重投表安排下一次（最后一项重复使用，不超过期限）；不可重试或已过期限即 undelivered。"""
    first = now if first_failed_at is None else first_failed_at
    round_no = rounds + 1
    schedule = policy.redelivery_schedule_s
    deadline = first + policy.redelivery_horizon_s
    if permanent or now >= deadline:
        return RedeliveryPlan(CallbackState.UNDELIVERED, None, first, round_no)
    next_at = min(now + schedule[min(round_no, len(schedule)) - 1], deadline)
    return RedeliveryPlan(CallbackState.PENDING, next_at, first, round_no)


def retry_after_s(
    active: int, produced_recently: int, policy: JobPolicy, caller_active: int = 0
) -> int | None:
    """全局未完成作业，或这个调用方的（caller_active），到了上限时给出 Retry-After：
    按最近吞吐估算腾出 10% 名额的时间；都没满返回 None。"""
    caller_limit = policy.max_active_per_caller
    if active < policy.max_active_jobs and (caller_limit is None or caller_active < caller_limit):
        return None
    if produced_recently == 0:
        return DEFAULT_RETRY_AFTER_S
    rate = produced_recently / RATE_WINDOW_S
    seconds = math.ceil(0.1 * policy.max_active_jobs / rate)
    return max(1, min(MAX_RETRY_AFTER_S, seconds))
