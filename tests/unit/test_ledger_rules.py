"""账本规则（纯函数）与 SQLite 文件的结构版本。"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serve_app.core.errors import ErrorCode
from serve_app.core.settings import JobPolicy
from serve_app.ledger import rules
from serve_app.ledger.records import CallbackState, JobState
from serve_app.ledger.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.ledger.store import LedgerSchemaError
from serve_app.models.reports import CallbackPayload, ReportJob

POLICY = JobPolicy(
    lease_s=30,
    heartbeat_s=10,
    max_runs=2,
    max_active_jobs=100,
    redelivery_schedule_s=(60, 300),
    redelivery_horizon_s=1000,
)
JOB = ReportJob(
    trace_id="t-1",
    report_type="sales_weekly",
    inputs={},
    length="short",
    callback_url="http://127.0.0.1/hook",
    metadata=None,
    created_at=datetime(2026, 11, 25, tzinfo=UTC),
)


@pytest.mark.parametrize(
    ("state", "holder", "cancel", "expected"),
    [
        (JobState.RENDERING, "me", False, "ok"),
        (JobState.GENERATING, "me", True, "cancelled"),
        (JobState.GENERATING, "other", False, "lost"),
        (JobState.DELIVERING, "me", False, "lost"),
    ],
)
def test_advance_verdict(state: JobState, holder: str, cancel: bool, expected: str) -> None:
    assert rules.advance_verdict(state, holder, "me", cancel) == expected


def test_cancel_overrides_any_result() -> None:
    failed = CallbackPayload.failed(JOB, ErrorCode.LLM_ERROR, "boom")
    assert rules.final_outcome(JOB, failed, cancel_requested=True).status == "cancelled"
    assert rules.final_outcome(JOB, failed, cancel_requested=False) is failed


def test_recovery_gives_up_after_max_runs_and_honours_cancel() -> None:
    now = time.time()
    assert rules.recovery_outcome(JOB, 1, False, POLICY, now) is None
    lost = rules.recovery_outcome(JOB, 2, False, POLICY, now)
    assert lost is not None and lost.error is not None
    assert lost.error.code == ErrorCode.WORKER_LOST
    cancelled = rules.recovery_outcome(JOB, 0, True, POLICY, now)
    assert cancelled is not None and cancelled.status == "cancelled"


def test_recovery_never_restarts_a_job_past_its_deadline() -> None:
    """重启、接手之后也一样：期限已过的作业不再开始，以 expired 结束。"""
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    job = JOB.model_copy(update={"deadline_at": deadline})
    assert rules.recovery_outcome(job, 1, False, POLICY, deadline.timestamp() - 1) is None
    expired = rules.recovery_outcome(job, 1, False, POLICY, deadline.timestamp())
    assert expired is not None and expired.status == "expired"
    assert expired.error is not None and expired.error.code == ErrorCode.DEADLINE_EXCEEDED
    # 已登记的取消优先于过期
    cancelled = rules.recovery_outcome(job, 1, True, POLICY, deadline.timestamp())
    assert cancelled is not None and cancelled.status == "cancelled"


def test_redelivery_schedule_repeats_its_last_step_until_the_horizon() -> None:
    first = rules.plan_redelivery(
        now=0, first_failed_at=None, rounds=0, permanent=False, policy=POLICY
    )
    assert (first.callback_state, first.next_attempt_at, first.rounds) == (
        CallbackState.PENDING,
        60,
        1,
    )
    third = rules.plan_redelivery(
        now=900, first_failed_at=0, rounds=2, permanent=False, policy=POLICY
    )
    assert third.next_attempt_at == 1000  # 300 秒后已过期限：截到期限
    late = rules.plan_redelivery(
        now=1000, first_failed_at=0, rounds=3, permanent=False, policy=POLICY
    )
    assert late.undelivered and late.next_attempt_at is None
    refused = rules.plan_redelivery(
        now=0, first_failed_at=None, rounds=0, permanent=True, policy=POLICY
    )
    assert refused.undelivered


def test_retry_after_follows_recent_throughput() -> None:
    assert rules.retry_after_s(active=99, produced_recently=0, policy=POLICY) is None
    assert rules.retry_after_s(active=100, produced_recently=0, policy=POLICY) == 5
    # 每秒 1 个：腾出 10 个名额要 10 秒
    assert rules.retry_after_s(active=100, produced_recently=60, policy=POLICY) == 10
    assert rules.retry_after_s(active=100, produced_recently=1, policy=POLICY) == 60


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


async def test_new_ledger_carries_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    store = SqliteJobStore(path, POLICY)
    await store.ping()
    await store.close()
    assert _user_version(path) == SCHEMA_VERSION


async def test_unversioned_ledger_is_migrated_in_place_keeping_its_jobs(tmp_path: Path) -> None:
    # 版本化之前写出的文件：版本 1 的结构、user_version = 0、作业 JSON 里没有 caller
    path = tmp_path / "ledger.sqlite3"
    legacy_job = JOB.model_dump_json(exclude={"caller"})
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0][1])
        db.execute(
            "INSERT INTO jobs (trace_id, state, job_json, history_json, created_at, updated_at,"
            " owner, lease_until, runs, cb_state) VALUES (?, 'accepted', ?, '[]', 1, 1,"
            " 'replica-a', 2, 1, 'waiting')",
            (JOB.trace_id, legacy_job),
        )
    reopened = SqliteJobStore(path, POLICY)
    record = await reopened.get(JOB.trace_id)
    await reopened.close()
    assert record is not None and record.state is JobState.ACCEPTED
    assert record.job.caller == "default"  # 调用方之前的作业都归 default
    assert _user_version(path) == SCHEMA_VERSION
    with sqlite3.connect(path) as db:
        [caller] = db.execute("SELECT caller FROM jobs").fetchone()
    assert caller == "default"


async def test_newer_ledger_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SqliteJobStore(path, POLICY)
    with pytest.raises(
        LedgerSchemaError, match=f"结构版本是 {SCHEMA_VERSION + 1}.*REPORTS_JOBS__LEDGER_PATH"
    ):
        await store.get("any")
    await store.close()
    assert _user_version(path) == SCHEMA_VERSION + 1  # 原样不动
