"""作业的收尾（记结果 → 投递 → 记投递）交给账本一侧：入口一次调用；旧副本、副本不可用、副本死在
投递前都不丢作业、不重复结果。真实 Ray 上 Ledger 副本收尾由集成层与故障层证明。"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from ray.exceptions import ActorUnavailableError

from deployments.handles.ledger_client import LedgerClient, LedgerSettlement
from deployments.ledger import Ledger
from serve_app.core.errors import LedgerOutdated, LedgerUnavailable
from serve_app.core.settings import CallbackPolicy, JobPolicy
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.ledger.store import JobStore
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob, utc_now
from serve_app.services.settlement import Settled, Settlement
from serve_app.services.stages import DeliveryStage
from tests.support.fakes import LedgerSideSettler, RecordingDelivery
from tests.support.harness import Harness
from tests.support.logs import captured_logs
from tests.support.metrics import RecordingMetricFactory
from tests.support.sample import FAST_JOBS, failed_payload, make_settings, sales_request
from tests.support.waiting import wait_until_async

CALLBACK = "http://127.0.0.1:9/hooks/reports"


class _Settlers:
    """记下 Harness 造出的收尾者（测试要编排它、读它的计数）。"""

    def __init__(self) -> None:
        self.made: list[LedgerSideSettler] = []

    def __call__(self, store: JobStore, delivery: DeliveryStage) -> LedgerSideSettler:
        settler = LedgerSideSettler(store, delivery)
        self.made.append(settler)
        return settler


@pytest.fixture
def recorder() -> RecordingMetricFactory:
    return RecordingMetricFactory()


@pytest.fixture
async def harness(
    recorder: RecordingMetricFactory,
) -> AsyncIterator[tuple[Harness, LedgerSideSettler]]:
    settlers = _Settlers()
    h = Harness(jobs=FAST_JOBS, metrics=recorder.metrics(), settler=settlers)
    yield h, settlers.made[0]
    await h.aclose()


async def _run_one(h: Harness) -> dict[str, Any]:
    """提交一份、等它结束，返回状态。"""
    async with h.client() as client:
        response = await client.post("/v1/reports", json=sales_request(CALLBACK))
        assert response.status_code == 202, response.text
        trace_id = response.json()["trace_id"]

        async def ended() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get(f"/v1/reports/{trace_id}")).json()
            return body if body["status"] == "succeeded" else None

        return await wait_until_async(ended, what="作业送达", timeout_s=5)


async def test_the_ingress_hands_the_whole_ending_to_the_settler(
    harness: tuple[Harness, LedgerSideSettler], recorder: RecordingMetricFactory
) -> None:
    """收尾交给账本一侧：入口自己的账本操作只有受理（没有 finish、record_delivery），回调一次。"""
    h, settler = harness
    body = await _run_one(h)
    await h.settle()
    assert settler.calls == 1 and len(h.delivery.sent) == 1
    assert body["callback"]["state"] == "delivered" and body["report"] is not None
    assert recorder.observed("reports_ledger_op_seconds", op="admit", outcome="ok")
    for op in ("finish", "record_delivery"):
        assert not recorder.observed("reports_ledger_op_seconds", op=op, outcome="ok"), op
    # 入口照样记结果的计数与受理 → 送达的时间（用收尾者答回的结果与作业）
    finished = {"report_type": "sales_weekly", "error_code": "", "priority": "normal"}
    assert recorder.count("reports_finished", status="succeeded", **finished) == 1
    assert recorder.observed("reports_accept_to_callback_seconds", status="succeeded")


async def test_an_old_ledger_replica_leaves_the_ending_to_the_ingress(
    harness: tuple[Harness, LedgerSideSettler], recorder: RecordingMetricFactory
) -> None:
    """滚动升级窗口：Ledger 副本不认收尾端点 → 这一份由入口就地收尾，恰好一次回调。"""
    h, settler = harness
    settler.fail_before = LedgerOutdated("settle_many：AttributeError")
    with captured_logs() as logs:
        body = await _run_one(h)
        await h.settle()
    assert len(h.delivery.sent) == 1 and body["callback"]["state"] == "delivered"
    assert recorder.observed("reports_ledger_op_seconds", op="finish", outcome="ok")
    assert any("Ledger 副本还不能收尾" in r["message"] for r in logs)


async def test_a_settler_that_is_not_worthwhile_now_is_bypassed(
    harness: tuple[Harness, LedgerSideSettler], recorder: RecordingMetricFactory
) -> None:
    """负载下（入口的账本调用正在合批）不交给 Ledger：入口就地收尾，结果与投递都由入口记。"""
    h, settler = harness
    settler.takes = False
    body = await _run_one(h)
    await h.settle()
    assert settler.calls == 0 and len(h.delivery.sent) == 1
    assert body["callback"]["state"] == "delivered"
    for op in ("finish", "record_delivery"):
        assert recorder.observed("reports_ledger_op_seconds", op=op, outcome="ok"), op


@pytest.mark.parametrize("when", ["before", "after_finish"])
async def test_a_ledger_outage_while_settling_is_taken_over_after_the_lease(
    harness: tuple[Harness, LedgerSideSettler], when: str
) -> None:
    """Ledger 不可用（什么都没做），或死在记下结果之后、投递之前：本次执行中断，租约到期后
    由扫描接手——前者重新生成，后者只投递已记下的结果。都恰好一次回调、不出 failed。"""
    h, settler = harness
    error = LedgerUnavailable("作业账本暂不可用（收尾）")
    if when == "before":
        settler.fail_before = error
    else:
        settler.fail_after_finish = error
    body = await _run_one(h)
    await h.settle()
    assert len(h.delivery.sent) == 1
    assert h.delivery.sent[0][1].status == "succeeded"
    assert len(h.llm.prompts) == (2 if when == "before" else 1)
    assert body["callback"]["state"] == "delivered"


def _job(trace_id: str = "t-settle", url: str = CALLBACK) -> ReportJob:
    return ReportJob(
        trace_id=trace_id,
        report_type="sales_weekly",
        inputs={},
        length="short",
        callback_url=url,
        created_at=utc_now(),
        caller="b",
    )


async def _admitted(store: SqliteJobStore, job: ReportJob, owner: str = "ingress-1") -> None:
    admission = await store.admit(job, owner, None)
    assert admission.record is not None


async def test_replaying_a_settlement_never_delivers_a_recorded_round_twice(
    tmp_path: Path,
) -> None:
    """整批重发的安全性（真实 SqliteJobStore）：投递记下之后同一 owner 再来一次什么都不做；
    只记下了结果（副本死在投递前）时重来投递已记的结果，同一个 webhook-id 的载荷。"""
    store = SqliteJobStore(tmp_path / "ledger.sqlite3", JobPolicy())
    delivery = RecordingDelivery()
    settlement = Settlement(store, delivery_round(delivery))
    try:
        done, half = _job("t-done"), _job("t-half")
        for job in (done, half):
            await _admitted(store, job)
        payload = failed_payload("t-done")
        first = await settlement.finish_and_deliver(done, "ingress-1", payload, ())
        assert isinstance(first, Settled) and first.after is not None
        assert first.after.callback.state == "delivered"
        assert await settlement.finish_and_deliver(done, "ingress-1", payload, ()) is None
        assert len(delivery.sent) == 1

        recorded = await store.finish("t-half", "ingress-1", failed_payload("t-half"), ())
        assert recorded is not None
        again = await settlement.finish_and_deliver(half, "ingress-1", failed_payload("t-half"), ())
        assert again is not None and again.final == recorded
        assert [p.trace_id for _, p in delivery.sent] == ["t-done", "t-half"]
        # 别的 owner（租约已被接手）来收尾：什么都不投
        assert await settlement.finish_and_deliver(half, "ingress-2", recorded, ()) is None
        assert len(delivery.sent) == 2
    finally:
        await store.close()


def delivery_round(delivery: RecordingDelivery) -> Any:
    async def deliver(job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        return await delivery.send(job, payload)

    return deliver


async def test_the_ledger_endpoint_settles_each_call_and_keeps_failures_apart(
    tmp_path: Path,
) -> None:
    """Ledger.settle_many：每个作业各自收尾，一个作业的异常只在它自己的结果里；别的方法整批拒绝。"""
    settings = make_settings(jobs={"ledger_path": tmp_path / "ledger.sqlite3"})
    ledger = Ledger(settings)
    store = cast(SqliteJobStore, ledger._store)
    delivery = RecordingDelivery()
    ledger._settlement = Settlement(store, delivery_round(delivery))
    try:
        job = _job("t-ok")
        await _admitted(store, job)
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("finish_and_deliver", (job, "ingress-1", failed_payload("t-ok"), ())),
            # 账本里没有的作业：finish 答 None，不投递
            ("finish_and_deliver", (_job("t-none"), "ingress-1", failed_payload("t-none"), ())),
            # 参数不对（少了两个）：只这一个失败
            ("finish_and_deliver", (job, "ingress-1")),
        ]
        outcomes = await ledger.settle_many(calls)
        assert outcomes[0][0] and outcomes[0][1].after.callback.state == "delivered"
        assert outcomes[1] == (True, None)
        assert not outcomes[2][0] and isinstance(outcomes[2][1], ValueError)
        assert [p.trace_id for _, p in delivery.sent] == ["t-ok"]
        with pytest.raises(ValueError, match="finish_and_deliver"):
            await ledger.settle_many([("finish", (job, "ingress-1", None, ()))])
    finally:
        await store.close()


async def test_a_ledger_without_callbacks_refuses_to_settle(tmp_path: Path) -> None:
    """没有回调句柄（或 Postgres 账本）的 Ledger 不收尾：整批失败，入口据此退回就地收尾。"""
    ledger = Ledger(make_settings(jobs={"ledger_path": tmp_path / "ledger.sqlite3"}))
    try:
        with pytest.raises(RuntimeError, match="不收尾"):
            await ledger.settle_many([("finish_and_deliver", ())])
    finally:
        await ledger._store.close()


class _SettleMany:
    """假 Ledger 句柄的 settle_many：记下每批的 trace_id；可编排先抛几次异常、或一直不答。"""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.errors: list[Exception] = []
        self.hang = False

    async def remote(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
        self.batches.append([args[0].trace_id for _, args in calls])
        if self.errors:
            raise self.errors.pop(0)
        if self.hang:
            await asyncio.sleep(3600)
        await asyncio.sleep(0.01)
        return [(True, Settled(args[2], None)) for _, args in calls]


class _Apply:
    """假 Ledger 句柄的 apply：release 之前不答（让入口的账本合批器有在途批次）。"""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def remote(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
        await self.release.wait()
        return [(True, None) for _ in calls]


class _Handle:
    def __init__(self) -> None:
        self.settle_many = _SettleMany()
        self.apply = _Apply()


def _settlement(
    timeouts_s: float = 10.0, handle: _Handle | None = None
) -> tuple[LedgerSettlement, _SettleMany]:
    handle = handle or _Handle()
    policy = JobPolicy(ledger_call_timeout_s=timeouts_s)
    callback = CallbackPolicy(
        max_attempts=1,
        attempt_deadline_s=timeouts_s,
        max_retry_after_s=0,
        max_backoff_s=0,
        initial_backoff_s=0,
        jitter_s=0,
    )
    metrics = RecordingMetricFactory().metrics()
    client = LedgerClient(cast(Any, handle), policy)
    return LedgerSettlement(client, callback, metrics), handle.settle_many


async def _settle(settlement: LedgerSettlement, job: ReportJob) -> Settled | None:
    return await settlement.finish_and_deliver(job, "ingress-1", failed_payload(job.trace_id), ())


async def test_endings_go_to_the_ledger_only_while_the_ingress_ledger_calls_are_idle() -> None:
    """入口的账本合批器有在途批次（负载下）时不划算交给 Ledger；批次回来、闲了又划算。"""
    handle = _Handle()
    settlement, _ = _settlement(handle=handle)
    client = settlement._ledger
    assert settlement.worthwhile()

    async def read() -> Any:
        return await client.get("t-1")

    pending = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    assert not settlement.worthwhile()
    handle.apply.release.set()
    assert await pending is None
    assert settlement.worthwhile()


async def test_endings_to_one_receiver_share_one_call_and_receivers_stay_apart() -> None:
    settlement, settle_many = _settlement()
    jobs = [_job(f"t-{i}") for i in range(3)] + [_job("t-other", "http://127.0.0.1:8/hooks")]
    results = await asyncio.gather(*(_settle(settlement, job) for job in jobs))
    assert [r.final.trace_id for r in results if r is not None] == [j.trace_id for j in jobs]
    assert sorted(settle_many.batches) == [["t-0", "t-1", "t-2"], ["t-other"]]


async def test_a_replica_briefly_unavailable_is_retried_as_a_whole_batch() -> None:
    settlement, settle_many = _settlement()
    settle_many.errors = [ActorUnavailableError("Ledger 副本重启中", None)]
    result = await _settle(settlement, _job())
    assert result is not None and len(settle_many.batches) == 2


async def test_a_replica_that_does_not_know_the_endpoint_is_reported_as_outdated() -> None:
    settlement, settle_many = _settlement()
    settle_many.errors = [AttributeError("Ledger has no attribute 'settle_many'")]
    with pytest.raises(LedgerOutdated, match="settle_many"):
        await _settle(settlement, _job())
    assert len(settle_many.batches) == 1  # 不重发


async def test_a_hung_ledger_is_reported_unavailable_without_resending() -> None:
    """超时不重发（副本也许还在投）：LedgerUnavailable，租约到期后由扫描接手。"""
    settlement, settle_many = _settlement(timeouts_s=0.02)
    settle_many.hang = True
    with pytest.raises(LedgerUnavailable, match="收尾"):
        await _settle(settlement, _job())
    assert len(settle_many.batches) == 1


def test_a_settlement_waits_out_a_whole_round_of_inline_retries() -> None:
    """收尾调用的超时容得下一整轮投递：每次尝试的时限、重试前最长的等待（含 Retry-After 上限）。"""
    policy = CallbackPolicy()
    longest_wait = max(policy.max_backoff_s, policy.max_retry_after_s) + policy.jitter_s
    assert policy.round_bound_s >= (
        policy.max_attempts * policy.attempt_deadline_s + (policy.max_attempts - 1) * longest_wait
    )
    no_retry_after = CallbackPolicy(honour_retry_after=False)
    assert no_retry_after.round_bound_s < policy.round_bound_s
