"""账本的契约（SQLite 与 Postgres 各跑一遍）：状态机、幂等、限流、租约与恢复、重投表、
持久化（时钟可控）；以及各自的特有行为（组提交、SKIP LOCKED 领取、结构版本）。"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from pydantic import JsonValue

from cluster.ports import free_port
from serve_app.core.errors import ErrorCode, LedgerUnavailable
from serve_app.core.settings import PROJECT_ROOT, JobPolicy
from serve_app.ledger import postgres_store
from serve_app.ledger.postgres_store import PostgresJobStore
from serve_app.ledger.records import CallbackState, JobState, StateChange
from serve_app.ledger.rows import at
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.ledger.store import IdempotencyKey, JobStore, LedgerSchemaError
from serve_app.models.reports import (
    CallbackPayload,
    Completion,
    DeliveryOutcome,
    ReportJob,
    Usage,
)
from tests.support.postgres import PostgresServer

POLICY = JobPolicy(
    lease_s=30,
    heartbeat_s=10,
    max_runs=2,
    max_active_jobs=3,
    redelivery_schedule_s=(60, 300),
    redelivery_horizon_s=1000,
    idempotency_ttl_s=100,
)
DELIVERED = DeliveryOutcome(delivered=True, attempts=1, status_code=200)
REFUSED = DeliveryOutcome(delivered=False, attempts=3, error="ConnectError")


class Clock:
    """可拨动的时钟。"""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> Callable[[JobPolicy], JobStore]:
    """按参数开一个存储（可换策略）：同一套契约测试跑在两种存储上（Postgres 是真实服务器）。"""

    def opener(policy: JobPolicy) -> JobStore:
        if request.param == "sqlite":
            return SqliteJobStore(tmp_path / f"ledger-{id(policy)}.sqlite3", policy, clock)
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return PostgresJobStore(server.create_database(), policy, clock=clock)

    return opener


@pytest.fixture
async def store(open_store: Callable[[JobPolicy], JobStore]) -> AsyncIterator[JobStore]:
    db = open_store(POLICY)
    yield db
    await db.close()


def _job(trace_id: str = "t-1") -> ReportJob:
    return ReportJob(
        trace_id=trace_id,
        report_type="sales_weekly",
        inputs={"period": "本周"},
        length="short",
        callback_url="http://127.0.0.1:9/hook",
        metadata={"order": 1},
        created_at=datetime.now(UTC),
    )


def _succeeded(job: ReportJob) -> CallbackPayload:
    report = Completion(
        content="正文",
        model="m",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=1),
    )
    return CallbackPayload.succeeded(job, report)


async def _produced(store: JobStore, trace_id: str = "t-1", owner: str = "a") -> None:
    job = _job(trace_id)
    assert (await store.admit(job, owner, None)).record is not None
    assert await store.advance(trace_id, owner, JobState.RENDERING) == "ok"
    assert await store.advance(trace_id, owner, JobState.GENERATING) == "ok"
    assert await store.finish(trace_id, owner, _succeeded(job)) is not None


async def test_full_lifecycle_is_recorded(store: JobStore) -> None:
    await _produced(store)
    record = await store.record_delivery("t-1", "a", DELIVERED)
    assert record is not None
    assert record.state is JobState.SUCCEEDED
    assert [h.state for h in record.history] == [
        JobState.ACCEPTED,
        JobState.RENDERING,
        JobState.GENERATING,
        JobState.DELIVERING,
        JobState.SUCCEEDED,
    ]
    assert record.callback.state is CallbackState.DELIVERED
    assert record.callback.attempts == 1 and record.callback.last_status_code == 200
    assert record.callback.webhook_id == "msg_t-1"
    assert record.outcome is not None and record.outcome.report is not None
    assert await store.get("missing") is None


async def test_a_passed_stage_is_written_with_the_next_in_its_own_order(
    store: JobStore, clock: Clock
) -> None:
    """渲染很快时 rendering 随进入 generating 的那一次写下（少一次账本往返）：历史按各自的时刻排好；
    同一次推进重放（句柄整批重试）不重复追加；途经阶段的时刻晚于账本的时钟（别的节点时钟快）时，
    generating 记在它之后，历史不倒序。"""
    accepted = clock.now
    for trace_id in ("t-1", "t-2", "t-3"):
        assert (await store.admit(_job(trace_id), "a", None)).record is not None
    clock.now += 2
    rendering = StateChange(state=JobState.RENDERING, at=at(accepted + 1))
    assert await store.advance("t-1", "a", JobState.GENERATING, (rendering,)) == "ok"
    record = await store.get("t-1")
    assert record is not None and record.state is JobState.GENERATING
    assert [(h.state, h.at) for h in record.history] == [
        (JobState.ACCEPTED, at(accepted)),
        (JobState.RENDERING, at(accepted + 1)),
        (JobState.GENERATING, at(clock.now)),
    ]
    clock.now += 1
    assert await store.advance("t-1", "a", JobState.GENERATING, (rendering,)) == "ok"
    replayed = await store.get("t-1")
    assert replayed is not None and replayed.history == record.history

    ahead = StateChange(state=JobState.RENDERING, at=at(clock.now + 60))
    assert await store.advance("t-2", "a", JobState.GENERATING, (ahead,)) == "ok"
    record = await store.get("t-2")
    assert record is not None
    assert [h.at for h in record.history[1:]] == [at(clock.now + 60), at(clock.now + 60)]

    # 渲染慢时先单独记 rendering：passed 就是它自己的那一条，时刻取渲染开始的那一刻
    own = StateChange(state=JobState.RENDERING, at=at(accepted + 1))
    assert await store.advance("t-3", "a", JobState.RENDERING, (own,)) == "ok"
    record = await store.get("t-3")
    assert record is not None and record.state is JobState.RENDERING
    assert [(h.state, h.at) for h in record.history[1:]] == [(JobState.RENDERING, at(accepted + 1))]

    # 被拒绝的推进（已登记取消）什么也不写，途经的阶段也不写
    assert (await store.request_cancel("t-3")).accepted
    assert await store.advance("t-3", "a", JobState.GENERATING, (rendering,)) == "cancelled"
    record = await store.get("t-3")
    assert record is not None
    assert [h.state for h in record.history] == [JobState.ACCEPTED, JobState.RENDERING]


async def test_a_rerun_shows_its_second_rendering_in_the_history(
    store: JobStore, clock: Clock
) -> None:
    """租约过期、别的副本领取后重新执行：作业已在 generating，途经的 rendering 照样追加，
    历史里看得到第二次执行（故障层按 rendering 的次数数执行了几次）。"""
    await store.admit(_job(), "dead", None)
    first = StateChange(state=JobState.RENDERING, at=at(clock.now))
    assert await store.advance("t-1", "dead", JobState.GENERATING, (first,)) == "ok"
    clock.now += POLICY.lease_s + 1
    [item] = await store.claim_due("b", 10)
    assert item.produce and item.record.runs == 2
    second = StateChange(state=JobState.RENDERING, at=at(clock.now))
    assert await store.advance("t-1", "b", JobState.GENERATING, (second,)) == "ok"
    record = await store.get("t-1")
    assert record is not None
    twice = [JobState.RENDERING, JobState.GENERATING] * 2
    assert [h.state for h in record.history] == [JobState.ACCEPTED, *twice]


async def test_fast_stages_are_written_with_the_result(store: JobStore, clock: Clock) -> None:
    """渲染与生成都很快时它们随结果一起写下（每个作业 3 次账本写）：历史按各自的时刻排好，
    delivering 不早于它们；记录结果被重试时答已记的结果、不重复追加；租约已丢时什么也不写。"""
    accepted = clock.now
    job = _job()
    await store.admit(job, "a", None)
    clock.now += 2
    passed = (
        StateChange(state=JobState.RENDERING, at=at(accepted + 0.5)),
        StateChange(state=JobState.GENERATING, at=at(accepted + 1)),
    )
    final = await store.finish("t-1", "a", _succeeded(job), passed)
    assert final is not None and final.status == "succeeded"
    record = await store.get("t-1")
    assert record is not None and record.state is JobState.DELIVERING
    assert [(h.state, h.at) for h in record.history] == [
        (JobState.ACCEPTED, at(accepted)),
        (JobState.RENDERING, at(accepted + 0.5)),
        (JobState.GENERATING, at(accepted + 1)),
        (JobState.DELIVERING, at(clock.now)),
    ]
    assert await store.finish("t-1", "a", _succeeded(job), passed) == final
    replayed = await store.get("t-1")
    assert replayed is not None and replayed.history == record.history

    await store.admit(_job("t-2"), "dead", None)
    clock.now += POLICY.lease_s + 1
    assert "t-2" in {i.record.trace_id for i in await store.claim_due("b", 10)}
    assert await store.finish("t-2", "dead", _succeeded(_job("t-2")), passed) is None
    lost = await store.get("t-2")
    assert lost is not None and [h.state for h in lost.history] == [JobState.ACCEPTED]


async def test_records_returned_by_writes_equal_what_is_read_back(store: JobStore) -> None:
    # 写入的答复（Postgres 由读到的行加上改动算出，不从库里取回整行）与之后读回的记录一致
    admitted = (await store.admit(_job(), "a", None)).record
    assert admitted == await store.get("t-1")
    cancel = await store.request_cancel("t-1")
    assert cancel.record == await store.get("t-1")
    await _produced(store, "t-2")
    refused = await store.record_delivery("t-2", "a", REFUSED)
    assert refused is not None and refused.callback.state is CallbackState.PENDING
    assert refused == await store.get("t-2")
    redelivered = await store.redeliver("t-2")
    assert redelivered is not None and redelivered == await store.get("t-2")


async def test_finish_replayed_by_its_owner_returns_the_recorded_outcome(
    store: JobStore,
) -> None:
    # 第一次 finish 已提交但回复丢了（超时），客户端重放：返回已记录的结果，不当作租约已丢
    await _produced(store)
    job = _job()
    replayed = await store.finish("t-1", "a", _succeeded(job))
    assert replayed is not None and replayed.status == "succeeded"
    # 别的副本不能借重放拿到结果
    assert await store.finish("t-1", "b", _succeeded(job)) is None


async def test_concurrent_lifecycles_share_commits(tmp_path: Path, clock: Clock) -> None:
    store = SqliteJobStore(
        tmp_path / "ledger.sqlite3", POLICY.model_copy(update={"max_active_jobs": 100}), clock
    )
    try:
        await asyncio.gather(*(_produced(store, f"t-{i}") for i in range(40)))
        records = await asyncio.gather(*(store.get(f"t-{i}") for i in range(40)))
        assert all(r is not None and r.state is JobState.DELIVERING for r in records)
        # 40 个作业的 200 次访问经组提交合成的事务少得多
        assert store.database.units == 200
        assert store.database.batches < store.database.units / 4
    finally:
        await store.close()


async def test_admit_is_idempotent_on_trace_id(store: JobStore) -> None:
    first = await store.admit(_job(), "a", None)
    again = await store.admit(_job(), "a", None)
    assert first.record == again.record


async def test_idempotency_key_replays_or_conflicts(store: JobStore, clock: Clock) -> None:
    key = IdempotencyKey(scope_key="k", body_hash="h1")
    first = await store.admit(_job("t-1"), "a", key)
    replay = await store.admit(_job("t-2"), "a", key)
    assert replay.replayed and replay.record is not None and replay.record.trace_id == "t-1"
    assert await store.get("t-2") is None
    other = await store.admit(_job("t-3"), "a", IdempotencyKey(scope_key="k", body_hash="h2"))
    assert other.record is None and other.conflict_trace_id == "t-1"
    # 过了有效期：同一个 key 可以开始新作业
    clock.now += POLICY.idempotency_ttl_s + 1
    fresh = await store.admit(_job("t-4"), "a", key)
    assert first.record is not None and not fresh.replayed
    assert fresh.record is not None and fresh.record.trace_id == "t-4"


async def test_admission_is_bounded_with_retry_after(store: JobStore, clock: Clock) -> None:
    for i in range(POLICY.max_active_jobs):
        assert (await store.admit(_job(f"t-{i}"), "a", None)).record is not None
    full = await store.admit(_job("t-x"), "a", None)
    assert full.record is None and full.retry_after_s == 5
    # 有了吞吐数据：按腾出 10% 的时间估算，至少 1 秒
    job = _job("t-0")
    await store.finish("t-0", "a", _succeeded(job))
    clock.now += 1
    assert (await store.admit(_job("t-y"), "a", None)).record is not None
    full = await store.admit(_job("t-z"), "a", None)
    assert full.retry_after_s is not None and 1 <= full.retry_after_s <= 60


async def test_a_json_job_keeps_its_schema_for_whoever_runs_it_and_its_parsed_report(
    store: JobStore, clock: Clock
) -> None:
    """请求自带的 output_schema 随作业落库：接手过期租约的副本按它生成；
    JSON 报告的 data 原样读回。"""
    schema: dict[str, JsonValue] = {"type": "object", "required": ["score"]}
    job = _job().model_copy(update={"output_schema": schema})
    await store.admit(job, "dead", None)
    clock.now += POLICY.lease_s + 1
    [item] = await store.claim_due("b", 10)
    assert item.produce and item.record.job.output_schema == schema
    report = Completion(
        content='{"score": 7}',
        format="json",
        data={"score": 7},
        model="m",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=1),
    )
    assert await store.finish("t-1", "b", CallbackPayload.succeeded(job, report)) is not None
    record = await store.get("t-1")
    assert record is not None and record.outcome is not None
    assert record.outcome.report == report


async def test_a_job_past_its_deadline_is_never_restarted_by_whoever_claims_it(
    store: JobStore, clock: Clock
) -> None:
    """期限随作业存进账本：副本失联、租约过期后，接手的副本不再执行，以 expired 结束并投递。"""
    deadline = datetime.fromtimestamp(clock.now + POLICY.lease_s / 2, UTC)
    await store.admit(_job().model_copy(update={"deadline_at": deadline}), "dead", None)
    await store.admit(_job("t-2").model_copy(update={"priority": "high"}), "dead", None)
    clock.now += POLICY.lease_s + 1
    # 领取的次序：high 先于 normal
    items = await store.claim_due("b", 10)
    assert [i.record.trace_id for i in items] == ["t-2", "t-1"]
    [expired] = [i for i in items if i.record.trace_id == "t-1"]
    assert not expired.produce and expired.record.state is JobState.DELIVERING
    outcome = expired.record.outcome
    assert outcome is not None and outcome.status == "expired"
    assert outcome.error is not None and outcome.error.code is ErrorCode.DEADLINE_EXCEEDED
    record = await store.record_delivery("t-1", "b", DELIVERED)
    assert record is not None and record.state is JobState.EXPIRED


async def test_cancel_before_and_after_result(store: JobStore) -> None:
    job = _job()
    await store.admit(job, "a", None)
    cancel = await store.request_cancel("t-1")
    assert cancel.accepted and cancel.record is not None and cancel.record.cancel_requested
    assert await store.advance("t-1", "a", JobState.RENDERING) == "cancelled"
    # 取消与完成赛跑：取消已登记，则结果改为 cancelled
    final = await store.finish("t-1", "a", _succeeded(job))
    assert final is not None and final.status == "cancelled"
    assert final.error is not None and final.error.code is ErrorCode.CANCELLED
    late = await store.request_cancel("t-1")
    assert not late.accepted and late.record is not None
    assert late.record.state is JobState.DELIVERING
    assert not (await store.request_cancel("nope")).accepted


async def test_expired_lease_is_claimed_then_fails_as_worker_lost(
    store: JobStore, clock: Clock
) -> None:
    await store.admit(_job(), "dead", None)
    assert await store.claim_due("b", 10) == []
    clock.now += POLICY.lease_s + 1
    [item] = await store.claim_due("b", 10)
    assert item.produce and item.record.runs == 2
    # 旧持有者已失去租约
    assert await store.advance("t-1", "dead", JobState.RENDERING) == "lost"
    assert (await store.heartbeat("dead", ["t-1"])).lost == ["t-1"]
    clock.now += POLICY.lease_s + 1
    [item] = await store.claim_due("c", 10)
    assert not item.produce and item.record.outcome is not None
    assert item.record.outcome.status == "failed"
    assert item.record.outcome.error is not None
    assert item.record.outcome.error.code is ErrorCode.WORKER_LOST


async def test_heartbeat_keeps_lease_and_reports_cancel(store: JobStore, clock: Clock) -> None:
    await store.admit(_job(), "a", None)
    clock.now += POLICY.lease_s - 1
    assert (await store.heartbeat("a", ["t-1"])).cancel == []
    clock.now += POLICY.lease_s - 1
    assert await store.claim_due("b", 10) == []
    await store.request_cancel("t-1")
    assert (await store.heartbeat("a", ["t-1"])).cancel == ["t-1"]


async def test_a_write_batched_with_others_keeps_a_heartbeats_lease(
    store: JobStore, clock: Clock
) -> None:
    # 续租只改租约：同一批里别的作业改租约、这个作业不改（登记取消），不能把续上的租约写回旧值
    await store.admit(_job("t-1"), "a", None)
    await store.admit(_job("t-2"), "a", None)
    clock.now += POLICY.lease_s - 10
    assert (await store.heartbeat("a", ["t-1"])).lost == []
    cancel, advanced = await asyncio.gather(
        store.request_cancel("t-1"), store.advance("t-2", "a", JobState.RENDERING)
    )
    assert cancel.accepted and advanced == "ok"
    clock.now += 15  # 过了最初的租约，没过续上的
    assert await store.claim_due("b", 10) == []


async def test_released_job_is_claimable_at_once_without_counting_a_run(
    store: JobStore,
) -> None:
    await store.admit(_job(), "a", None)
    await store.release("a", ["t-1"])
    [item] = await store.claim_due("b", 10)
    assert item.produce and item.record.runs == 1


async def test_unowned_cancelled_job_is_claimed_for_cancelled_callback(
    store: JobStore, clock: Clock
) -> None:
    await store.admit(_job(), "dead", None)
    await store.request_cancel("t-1")
    clock.now += POLICY.lease_s + 1
    [item] = await store.claim_due("b", 10)
    assert not item.produce and item.record.outcome is not None
    assert item.record.outcome.status == "cancelled"


async def test_redelivery_follows_schedule_until_horizon(store: JobStore, clock: Clock) -> None:
    await _produced(store)
    record = await store.record_delivery("t-1", "a", REFUSED)
    assert record is not None and record.state is JobState.DELIVERING
    assert record.callback.state is CallbackState.PENDING and record.callback.attempts == 3
    assert record.callback.next_attempt_at is not None
    assert record.callback.next_attempt_at.timestamp() == pytest.approx(clock.now + 60)
    assert await store.claim_due("b", 10) == []
    clock.now += 60
    [item] = await store.claim_due("b", 10)
    assert not item.produce
    record = await store.record_delivery("t-1", "b", REFUSED)
    assert record is not None and record.callback.next_attempt_at is not None
    assert record.callback.next_attempt_at.timestamp() == pytest.approx(clock.now + 300)
    # 最后一档重复使用，直到期限；期限到了最后一试在期限那一刻
    for _ in range(3):
        clock.now += 300
        assert len(await store.claim_due("b", 10)) == 1
        record = await store.record_delivery("t-1", "b", REFUSED)
    assert record is not None and record.callback.state is CallbackState.PENDING
    clock.now += 300
    assert len(await store.claim_due("b", 10)) == 1
    record = await store.record_delivery("t-1", "b", REFUSED)
    assert record is not None
    assert record.callback.state is CallbackState.UNDELIVERED
    assert record.state is JobState.SUCCEEDED and record.callback.next_attempt_at is None
    assert [r.trace_id for r in await store.list_undelivered(10)] == ["t-1"]
    # 运维重投：立即到期，webhook-id 不变
    again = await store.redeliver("t-1")
    assert again is not None and again.callback.state is CallbackState.PENDING
    [item] = await store.claim_due("b", 10)
    record = await store.record_delivery("t-1", "b", DELIVERED)
    assert record is not None and record.callback.state is CallbackState.DELIVERED
    assert await store.list_undelivered(10) == []


async def test_permanent_failure_is_undelivered_at_once(store: JobStore) -> None:
    await _produced(store)
    gone = DeliveryOutcome(delivered=False, attempts=1, status_code=410, permanent=True)
    record = await store.record_delivery("t-1", "a", gone)
    assert record is not None and record.callback.state is CallbackState.UNDELIVERED


async def test_redeliver_needs_a_result(store: JobStore) -> None:
    await store.admit(_job(), "a", None)
    record = await store.redeliver("t-1")
    assert record is not None and record.outcome is None
    assert await store.redeliver("nope") is None


async def test_jobs_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "ledger.sqlite3"
    first = SqliteJobStore(path, POLICY, clock)
    await first.admit(_job(), "a", None)
    await first.close()
    second = SqliteJobStore(path, POLICY, clock)
    try:
        record = await second.get("t-1")
        assert record is not None and record.state is JobState.ACCEPTED
        clock.now += POLICY.lease_s + 1
        assert len(await second.claim_due("b", 10)) == 1
    finally:
        await second.close()


def test_an_unclosed_ledger_does_not_block_process_exit(tmp_path: Path) -> None:
    # 忘了 close 时，账本线程不能让解释器退出一直等着
    code = (
        "import asyncio\n"
        "from pathlib import Path\n"
        "from serve_app.core.settings import PROJECT_ROOT, JobPolicy\n"
        "from serve_app.ledger.sqlite_store import SqliteJobStore\n"
        f"store = SqliteJobStore(Path({str(tmp_path / 'l.sqlite3')!r}), JobPolicy())\n"
        "asyncio.run(store.get('x'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=True)


async def test_a_replica_that_lost_its_lease_records_no_result_and_no_delivery(
    store: JobStore, clock: Clock
) -> None:
    job = _job()
    await store.admit(job, "dead", None)
    assert await store.advance("t-1", "dead", JobState.RENDERING) == "ok"
    clock.now += POLICY.lease_s + 1
    [item] = await store.claim_due("b", 10)
    assert item.produce
    # 旧持有者醒来：结果与投递都记不上
    assert await store.finish("t-1", "dead", _succeeded(job)) is None
    assert await store.finish("t-1", "b", _succeeded(job)) is not None
    assert await store.record_delivery("t-1", "dead", DELIVERED) is None
    record = await store.get("t-1")
    assert record is not None and record.callback.state is CallbackState.PENDING
    assert record.callback.attempts == 0
    delivered = await store.record_delivery("t-1", "b", DELIVERED)
    assert delivered is not None and delivered.callback.state is CallbackState.DELIVERED


# ---- Postgres 特有：多个副本各自直连同一个库 ----


async def test_two_replicas_racing_for_expired_leases_never_claim_the_same_job(
    postgres_server: PostgresServer, clock: Clock
) -> None:
    url = postgres_server.create_database()
    policy = POLICY.model_copy(update={"max_active_jobs": 100})
    replicas = [PostgresJobStore(url, policy, clock=clock) for _ in range(2)]
    try:
        ids = {f"t-{i}" for i in range(30)}
        for trace_id in sorted(ids):
            await replicas[0].admit(_job(trace_id), "dead", None)
        clock.now += POLICY.lease_s + 1
        claimed = await asyncio.gather(
            replicas[0].claim_due("a", 100), replicas[1].claim_due("b", 100)
        )
        by_a = {item.record.trace_id for item in claimed[0]}
        by_b = {item.record.trace_id for item in claimed[1]}
        assert by_a.isdisjoint(by_b) and by_a | by_b == ids
        # 没领到的一方对这些作业的写入都落空
        for trace_id in by_a:
            assert await replicas[1].advance(trace_id, "b", JobState.RENDERING) == "lost"
        for trace_id in by_b:
            assert await replicas[0].advance(trace_id, "a", JobState.RENDERING) == "lost"
    finally:
        await asyncio.gather(*(r.close() for r in replicas))


async def test_a_replica_acting_on_a_remembered_row_sees_what_others_wrote(
    postgres_server: PostgresServer, clock: Clock
) -> None:
    # 副本记住自己写成的行、下一次不先读：别的副本登记了取消、接手了租约，它的写入落空，重读再判
    url = postgres_server.create_database()
    mine, other = (PostgresJobStore(url, POLICY, clock=clock) for _ in range(2))
    try:
        job = _job()
        await mine.admit(job, "a", None)
        assert await mine.advance("t-1", "a", JobState.RENDERING) == "ok"
        assert (await other.request_cancel("t-1")).accepted
        assert await mine.advance("t-1", "a", JobState.GENERATING) == "cancelled"
        final = await mine.finish("t-1", "a", _succeeded(job))
        assert final is not None and final.status == "cancelled"
        await mine.admit(_job("t-2"), "a", None)
        clock.now += POLICY.lease_s + 1
        claimed = {item.record.trace_id for item in await other.claim_due("b", 10)}
        assert "t-2" in claimed
        assert await mine.advance("t-2", "a", JobState.RENDERING) == "lost"
        assert await mine.finish("t-2", "a", _succeeded(_job("t-2"))) is None
        assert await other.advance("t-2", "b", JobState.RENDERING) == "ok"
    finally:
        await asyncio.gather(mine.close(), other.close())


async def test_postgres_remembers_only_unfinished_jobs_up_to_a_bound(
    postgres_server: PostgresServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 记住的行只为省读：结束了的作业不再记，数目有上限，作业与行一起忘（长跑的副本内存不涨）
    monkeypatch.setattr(postgres_store, "_REMEMBERED_ROWS", 5)
    policy = POLICY.model_copy(update={"max_active_jobs": 100})
    store = PostgresJobStore(postgres_server.create_database(), policy, clock=clock)
    try:
        await asyncio.gather(*(_produced(store, f"t-{i}") for i in range(20)))
        remembered = store._memory.rows.keys()  # 检查内部的上限
        assert len(remembered) == 5 and store._memory.jobs.keys() <= remembered
        await asyncio.gather(*(store.record_delivery(f"t-{i}", "a", DELIVERED) for i in range(20)))
        assert not store._memory.rows and not store._memory.jobs
        assert all(
            r is not None and r.state is JobState.SUCCEEDED
            for r in await asyncio.gather(*(store.get(f"t-{i}") for i in range(20)))
        )
    finally:
        await store.close()


async def test_concurrent_writers_on_one_job_keep_every_change(
    postgres_server: PostgresServer, clock: Clock
) -> None:
    # 持有者推进阶段的同时，别的副本登记取消：两次写入都在（乐观并发重读后再写）
    store = PostgresJobStore(postgres_server.create_database(), POLICY, clock=clock)
    try:
        await store.admit(_job(), "a", None)
        advanced, cancel = await asyncio.gather(
            store.advance("t-1", "a", JobState.RENDERING), store.request_cancel("t-1")
        )
        assert cancel.accepted
        record = await store.get("t-1")
        assert record is not None and record.cancel_requested
        assert advanced in {"ok", "cancelled"}
        assert (advanced == "ok") == (record.state is JobState.RENDERING)
    finally:
        await store.close()


async def test_postgres_groups_concurrent_lifecycles_into_batched_statements(
    postgres_server: PostgresServer, clock: Clock
) -> None:
    policy = POLICY.model_copy(update={"max_active_jobs": 100})
    store = PostgresJobStore(postgres_server.create_database(), policy, clock=clock)
    try:
        await asyncio.gather(*(_produced(store, f"t-{i}") for i in range(40)))
        records = await asyncio.gather(*(store.get(f"t-{i}") for i in range(40)))
        assert all(r is not None and r.state is JobState.DELIVERING for r in records)
        # 40 个作业的 160 次写入合成的批次少得多（每批一条批量条件写，没记住的行先一条批量读）
        assert store.batcher.calls == 160
        assert store.batcher.batches < store.batcher.calls / 4
    finally:
        await store.close()


async def test_postgres_batch_orders_operations_on_one_job(
    postgres_server: PostgresServer, clock: Clock
) -> None:
    # 同一批里同一作业的几个操作按提交顺序生效（后一个看到前一个写下的状态）
    store = PostgresJobStore(postgres_server.create_database(), POLICY, clock=clock)
    try:
        job = _job()
        await store.admit(job, "a", None)
        rendering, generating, final = await asyncio.gather(
            store.advance("t-1", "a", JobState.RENDERING),
            store.advance("t-1", "a", JobState.GENERATING),
            store.finish("t-1", "a", _succeeded(job)),
        )
        assert (rendering, generating) == ("ok", "ok")
        assert final is not None and final.status == "succeeded"
        record = await store.get("t-1")
        assert record is not None
        assert [h.state for h in record.history] == [
            JobState.ACCEPTED,
            JobState.RENDERING,
            JobState.GENERATING,
            JobState.DELIVERING,
        ]
    finally:
        await store.close()


async def test_newer_schema_is_refused(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    first = PostgresJobStore(url, POLICY)
    await first.ping()
    await first.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO ledger_schema (version) VALUES (99)")
    later = PostgresJobStore(url, POLICY)
    try:
        with pytest.raises(LedgerSchemaError, match="99"):
            await later.get("t-1")
    finally:
        await later.close()


async def test_unreachable_postgres_is_ledger_unavailable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    store = PostgresJobStore(url, POLICY.model_copy(update={"ledger_call_timeout_s": 0.5}))
    try:
        with pytest.raises(LedgerUnavailable):
            await store.get("t-1")
    finally:
        await store.close()


async def test_postgres_restart_is_unavailable_then_recovers(clock: Clock) -> None:
    server = PostgresServer().start()
    policy = POLICY.model_copy(update={"ledger_call_timeout_s": 1})
    store = PostgresJobStore(server.create_database(), policy, clock=clock)
    try:
        await store.admit(_job(), "a", None)
        server.stop()
        with pytest.raises(LedgerUnavailable):
            await store.get("t-1")
        server.start()
        # 连接池自己重连；已提交的作业都在
        record = await store.get("t-1")
        assert record is not None and record.state is JobState.ACCEPTED
    finally:
        await store.close()
        server.cleanup()


# ---- 保留期 ----


async def _finished(store: JobStore, trace_id: str, delivered: bool = True) -> None:
    await _produced(store, trace_id)
    outcome = DELIVERED if delivered else REFUSED.model_copy(update={"permanent": True})
    assert await store.record_delivery(trace_id, "a", outcome) is not None


async def test_purge_removes_only_finished_jobs_past_retention(
    store: JobStore, clock: Clock
) -> None:
    key = IdempotencyKey(scope_key="k-old", body_hash="h")
    await store.admit(_job("t-keyed"), "a", key)
    await _finished(store, "t-old")
    await _finished(store, "t-undelivered", delivered=False)
    await _produced(store, "t-pending")  # 结果有了、回调待投：不删
    # 快到保留期：都还在
    clock.now += POLICY.retention_days * 86400 - 10
    assert await store.purge_finished(100) == 0
    # 过了保留期：已结束（送达或已放弃）的删掉；未结束的、还在生成的都留着
    clock.now += 20
    await _finished(store, "t-new")
    assert await store.purge_finished(100) == 2
    assert await store.get("t-old") is None and await store.get("t-undelivered") is None
    for kept in ("t-pending", "t-new", "t-keyed"):
        assert await store.get(kept) is not None, kept
    # 过期的幂等键也删了：同一个键可以开始新作业
    fresh = await store.admit(_job("t-fresh"), "a", key)
    assert fresh.record is not None and fresh.record.trace_id == "t-fresh"


async def test_purge_works_in_small_batches(store: JobStore, clock: Clock) -> None:
    for i in range(5):
        await _finished(store, f"t-{i}")
    clock.now += POLICY.retention_days * 86400 + 1
    assert [await store.purge_finished(2) for _ in range(4)] == [2, 2, 1, 0]


async def test_sqlite_ledger_stays_bounded_over_a_long_run(tmp_path: Path, clock: Clock) -> None:
    """30 天，每天 100 个作业（每个约 6 KB），每天清一次：文件不再随天数增长，保留期内的都能读。"""
    policy = POLICY.model_copy(
        update={"max_active_jobs": 1000, "retention_days": 5, "idempotency_ttl_s": 3600}
    )
    path = tmp_path / "ledger.sqlite3"
    store = SqliteJobStore(path, policy, clock)
    sizes: dict[int, int] = {}
    try:
        for day in range(30):
            await asyncio.gather(*(_big_finished(store, f"d{day}-{i}") for i in range(100)))
            while await store.purge_finished(500):
                pass
            sizes[day] = sum(f.stat().st_size for f in tmp_path.glob("ledger.sqlite3*"))
            clock.now += 86400
        for day in range(25, 30):  # 保留期（5 天）内的都在
            assert await store.get(f"d{day}-0") is not None, day
        assert await store.get("d23-0") is None
    finally:
        await store.close()
    # 保留期填满之后文件大小不随天数增长（删掉的页被新写入复用）：第 30 天不比第 8 天大多少
    assert max(sizes[d] for d in range(15, 30)) <= sizes[8] * 1.3, sizes


async def _big_finished(store: SqliteJobStore, trace_id: str) -> None:
    job = _job(trace_id).model_copy(update={"inputs": {"period": "本周", "data": "销" * 2000}})
    await store.admit(job, "a", None)
    await store.advance(trace_id, "a", JobState.RENDERING)
    await store.advance(trace_id, "a", JobState.GENERATING)
    await store.finish(trace_id, "a", _succeeded(job))
    await store.record_delivery(trace_id, "a", DELIVERED)


async def test_each_caller_gets_its_own_share_of_the_queue(
    open_store: Callable[[JobPolicy], JobStore],
) -> None:
    # 全局 3 个、每个调用方 2 个：alice 占满自己的份额后 429，bob 照样能交
    store = open_store(POLICY.model_copy(update={"max_active_per_caller": 2}))

    def job(trace_id: str, caller: str) -> ReportJob:
        return _job(trace_id).model_copy(update={"caller": caller})

    for i in range(2):
        assert (await store.admit(job(f"a-{i}", "alice"), "r", None)).record is not None
    refused = await store.admit(job("a-2", "alice"), "r", None)
    assert refused.record is None and refused.retry_after_s is not None
    admitted = await store.admit(job("b-0", "bob"), "r", None)
    assert admitted.record is not None and admitted.record.job.caller == "bob"
    # 全局上限也还在
    full = await store.admit(job("c-0", "carol"), "r", None)
    assert full.record is None and full.retry_after_s is not None
    await store.close()
