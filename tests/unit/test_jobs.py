"""作业接口（进程内账本 + 执行器 + 假 LLM/投递）：状态、幂等、限流、取消、重投、恢复、排空。"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from deployments.handles.ledger_client import LedgerClient
from serve_app.core.errors import LedgerUnavailable
from serve_app.core.settings import JobPolicy
from serve_app.ledger.records import JobState
from serve_app.models.reports import DeliveryOutcome, ReportJob
from tests.support.harness import Harness
from tests.support.sample import FAST_JOBS, SUCCEEDED_HISTORY, sales_request
from tests.support.waiting import wait_until_async

CALLBACK = "http://127.0.0.1:9/hooks/reports"


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(jobs=FAST_JOBS)
    yield h
    await h.aclose()


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    async with harness.client() as http:
        yield http


async def _submit(client: httpx.AsyncClient, **headers: str) -> str:
    response = await client.post("/v1/reports", json=sales_request(CALLBACK), headers=headers)
    assert response.status_code == 202, response.text
    trace_id: str = response.json()["trace_id"]
    return trace_id


async def _status(client: httpx.AsyncClient, trace_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/reports/{trace_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _wait_state(client: httpx.AsyncClient, trace_id: str, state: str) -> dict[str, Any]:

    async def in_state() -> dict[str, Any] | None:
        body = await _status(client, trace_id)
        return body if body["status"] == state else None

    return await wait_until_async(in_state, what=f"状态 {state}", timeout_s=5)


async def _submit_stuck_in_generation(client: httpx.AsyncClient, harness: Harness) -> str:
    """提交一个会在 generating 停留 30 秒的作业，等它进入 generating。"""
    harness.llm.delay_s = 30
    trace_id = await _submit(client)
    await _wait_state(client, trace_id, "generating")
    return trace_id


async def _wait_sent(harness: Harness, count: int) -> None:
    """等假投递收到 count 次回调。"""

    async def sent() -> bool:
        return len(harness.delivery.sent) >= count

    await wait_until_async(sent, what=f"{count} 次回调", timeout_s=5)


async def test_status_reports_every_stage_and_the_result(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    trace_id = await _submit(client)
    await harness.settle()
    body = await _status(client, trace_id)
    assert body["status"] == "succeeded" and body["report"]["content"] == "报告正文"
    assert [h["state"] for h in body["history"]] == SUCCEEDED_HISTORY
    assert body["callback"]["state"] == "delivered" and body["callback"]["attempts"] == 1
    assert body["callback"]["webhook_id"] == f"msg_{trace_id}"
    assert body["metadata"] == {"order": 42, "tags": ["周报"]} and body["error"] is None
    missing = await client.get("/v1/reports/no-such-job")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_a_fast_job_takes_three_ledger_writes_and_slow_stages_still_show(
    client: httpx.AsyncClient, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """渲染与生成都很快的作业写三次账本：受理、结果（rendering 与 generating 随它一起记下）、投递。
    哪一步慢了才为它多写一次：还没做完时状态查询就是那一步。历史几种情况都完整、按时刻排好。"""
    writes: list[str] = []
    for op in ("admit", "advance", "finish", "record_delivery"):
        real = getattr(harness.store, op)

        async def counted(*args: Any, _op: str = op, _real: Any = real) -> Any:
            writes.append(_op)
            return await _real(*args)

        monkeypatch.setattr(harness.store, op, counted)

    async def history_of(trace_id: str) -> list[datetime]:
        body = await _status(client, trace_id)
        assert body["status"] == "succeeded"
        history: list[dict[str, Any]] = body["history"]
        assert [h["state"] for h in history] == SUCCEEDED_HISTORY
        times = [datetime.fromisoformat(h["at"]) for h in history]
        assert times == sorted(times)
        return times

    fast = await _submit(client)
    await harness.settle()
    assert writes == ["admit", "finish", "record_delivery"]
    await history_of(fast)

    writes.clear()
    harness.render.delay_s = 1.0
    slow_render = await _submit(client)
    await _wait_state(client, slow_render, "rendering")
    await harness.settle()
    assert writes == ["admit", "advance", "finish", "record_delivery"]
    # 慢的渲染在开始 0.5 秒后才记下 rendering，时刻仍是渲染开始的那一刻
    _, rendering, generating, *_ = await history_of(slow_render)
    assert (generating - rendering).total_seconds() >= 0.95

    writes.clear()
    harness.render.delay_s = 0.0
    harness.llm.delay_s = 1.0
    slow_generation = await _submit(client)
    await _wait_state(client, slow_generation, "generating")
    await harness.settle()
    assert writes == ["admit", "advance", "finish", "record_delivery"]
    # generating 的时刻是生成开始的那一刻（不是 0.5 秒后记下它的时候）
    _, rendering, generating, delivering, _ = await history_of(slow_generation)
    assert (generating - rendering).total_seconds() < 0.5
    assert (delivering - generating).total_seconds() >= 0.95


async def test_idempotency_key_replays_the_first_202(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    first = await _submit(client, **{"Idempotency-Key": "order-42"})
    replay = await client.post(
        "/v1/reports", json=sales_request(CALLBACK), headers={"Idempotency-Key": "order-42"}
    )
    assert replay.status_code == 202 and replay.json()["trace_id"] == first
    assert replay.headers["Idempotent-Replayed"] == "true"
    await harness.settle()
    assert len(harness.llm.prompts) == 1  # 没有再生成
    other = sales_request(CALLBACK, length="long")
    conflict = await client.post("/v1/reports", json=other, headers={"Idempotency-Key": "order-42"})
    assert conflict.status_code == 409
    error = conflict.json()["error"]
    assert error["code"] == "idempotency_conflict" and first in error["message"]
    bad = await client.post("/v1/reports", json=other, headers={"Idempotency-Key": ""})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["error"]["message"]


async def test_full_queue_answers_429_with_retry_after() -> None:
    harness = Harness(jobs={**FAST_JOBS, "max_active_jobs": 1})
    harness.llm.delay_s = 2
    try:
        async with harness.client() as client:
            await _submit(client)
            response = await client.post("/v1/reports", json=sales_request(CALLBACK))
            assert response.status_code == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["code"] == "overloaded"
    finally:
        await harness.aclose()


async def test_cancel_during_generation_aborts_it(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    trace_id = await _submit_stuck_in_generation(client, harness)
    response = await client.delete(f"/v1/reports/{trace_id}")
    assert response.status_code == 202
    # 生成被中止（假 LLM 要睡 30 秒，这里 5 秒内就收尾）
    await harness.settle(timeout_s=5)
    [(_, payload)] = harness.delivery.sent
    assert payload.status == "cancelled" and payload.error is not None
    assert payload.error.code == "cancelled"
    body = await _status(client, trace_id)
    assert body["status"] == "cancelled" and body["callback"]["state"] == "delivered"
    again = await client.delete(f"/v1/reports/{trace_id}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_conflict"
    assert (await client.delete("/v1/reports/nope")).status_code == 404


async def _submit_queued_behind_a_stuck_job(harness: Harness) -> str:
    """名额只有 1 个：第一个作业卡在生成，第二个在副本的队列里等名额。"""
    async with harness.client() as client:
        await _submit_stuck_in_generation(client, harness)
        queued = await _submit(client)
        assert harness.runner.running == 2
        assert (await _status(client, queued))["status"] == "accepted"
    return queued


async def _wait_cancelled_while_the_other_generates(harness: Harness, queued: str) -> None:
    """排队的作业 5 秒内以 cancelled 收尾（不等卡住的那个让出名额），卡住的那个照旧在生成。"""

    async def sent() -> bool:
        return any(p.trace_id == queued for _, p in harness.delivery.sent)

    await wait_until_async(sent, what="排队作业的 cancelled 回调", timeout_s=5)
    [(_, payload)] = harness.delivery.sent
    assert payload.status == "cancelled" and payload.error is not None
    record = await harness.store.get(queued)
    assert record is not None and record.state is JobState.CANCELLED
    # 没进过 rendering：在队列里就收尾了
    states = [h.state for h in record.history]
    assert states == [JobState.ACCEPTED, JobState.DELIVERING, JobState.CANCELLED]
    assert harness.runner.running == 1 and len(harness.llm.prompts) == 1


async def test_cancelling_a_queued_job_ends_it_without_waiting_for_a_slot() -> None:
    harness = Harness(jobs={**FAST_JOBS, "max_concurrent_per_replica": 1})
    try:
        queued = await _submit_queued_behind_a_stuck_job(harness)
        async with harness.client() as client:
            response = await client.delete(f"/v1/reports/{queued}")
        assert response.status_code == 202
        await _wait_cancelled_while_the_other_generates(harness, queued)
    finally:
        await harness.aclose()


async def test_a_queued_job_cancelled_on_another_replica_leaves_the_queue() -> None:
    harness = Harness(jobs={**FAST_JOBS, "max_concurrent_per_replica": 1})
    try:
        queued = await _submit_queued_behind_a_stuck_job(harness)
        # DELETE 落在另一个入口副本：本副本从续租回复得知
        assert (await harness.store.request_cancel(queued)).accepted
        await _wait_cancelled_while_the_other_generates(harness, queued)
    finally:
        await harness.aclose()


async def test_undelivered_round_is_redelivered_from_the_ledger(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    refused = DeliveryOutcome(delivered=False, attempts=2, error="ConnectError")
    harness.delivery.outcome = refused
    trace_id = await _submit(client)
    body = await _wait_state(client, trace_id, "delivering")
    assert body["report"] is not None  # 结果已在账本里，可以查询
    assert body["callback"]["state"] == "pending" and body["callback"]["next_attempt_at"]
    harness.delivery.outcome = DeliveryOutcome(delivered=True, attempts=1, status_code=200)
    body = await _wait_state(client, trace_id, "succeeded")
    assert body["callback"]["attempts"] >= 3
    assert all(p.trace_id == trace_id for _, p in harness.delivery.sent)
    # 手动重投：已送达的也可以再投一次（同一 webhook-id）
    response = await client.post(f"/v1/reports/{trace_id}/redeliver")
    assert response.status_code == 202
    await _wait_sent(harness, 3)


async def test_redeliver_needs_a_result(client: httpx.AsyncClient, harness: Harness) -> None:
    harness.llm.delay_s = 30
    trace_id = await _submit(client)
    response = await client.post(f"/v1/reports/{trace_id}/redeliver")
    assert response.status_code == 409
    assert (await client.post("/v1/reports/nope/redeliver")).status_code == 404


async def test_undelivered_jobs_are_listed_for_ops(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    harness.delivery.outcome = DeliveryOutcome(
        delivered=False, attempts=1, status_code=410, permanent=True
    )
    trace_id = await _submit(client)
    await _wait_state(client, trace_id, "succeeded")
    listing = (await client.get("/v1/ops/undelivered")).json()
    assert listing["count"] == 1 and listing["reports"][0]["trace_id"] == trace_id
    assert listing["reports"][0]["callback"]["state"] == "undelivered"


async def test_job_of_a_vanished_replica_is_recovered(harness: Harness) -> None:
    job = ReportJob(
        trace_id="orphan",
        report_type="sales_weekly",
        inputs=dict(sales_request(CALLBACK)["inputs"]),
        length="short",
        callback_url=CALLBACK,
        created_at=datetime.now(UTC),
    )
    await harness.store.admit(job, "replica-that-crashed", None)
    harness.runner.start()
    await _wait_sent(harness, 1)
    [(_, payload)] = harness.delivery.sent
    assert payload.trace_id == "orphan" and payload.status == "succeeded"
    record = await harness.store.get("orphan")
    assert record is not None and record.runs == 2 and record.state is JobState.SUCCEEDED


async def test_drain_hands_unfinished_jobs_back(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    trace_id = await _submit_stuck_in_generation(client, harness)
    await harness.runner.drain(timeout_s=0.1)
    record = await harness.store.get(trace_id)
    assert record is not None and record.state is JobState.GENERATING
    # 租约已交还：另一个副本立刻就能接手，且这次不计入执行次数
    [item] = await harness.store.claim_due("other", 10)
    assert item.produce and item.record.runs == 1


async def test_ops_listing_rejects_unknown_parameters(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/ops/undelivered", params={"limt": 5})
    assert response.status_code == 422 and "limt" in response.json()["error"]["message"]


async def test_cancel_registered_on_another_replica_reaches_the_runner(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    trace_id = await _submit_stuck_in_generation(client, harness)
    # DELETE 落在另一个入口副本：只登记在账本里，本副本经续租回复得知
    assert (await harness.store.request_cancel(trace_id)).accepted
    await harness.settle(timeout_s=5)
    [(_, payload)] = harness.delivery.sent
    assert payload.status == "cancelled"


async def test_runner_that_lost_its_lease_stops_without_delivering(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    trace_id = await _submit_stuck_in_generation(client, harness)
    # 另一个副本接手了（如本副本曾长时间失联）：本副本的下一次续租得知后停止
    await harness.store.release(harness.runner.owner, [trace_id])
    [item] = await harness.store.claim_due("other", 10)
    assert item.record.trace_id == trace_id
    await harness.settle(timeout_s=5)
    assert harness.delivery.sent == []
    record = await harness.store.get(trace_id)
    assert record is not None and record.state is JobState.GENERATING


async def test_slow_ledger_replies_do_not_let_a_live_holders_lease_expire(
    client: httpx.AsyncClient, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 账本的回复慢（去程 0.05 s、回程 0.3 s）：顺序续租到达账本的间隔是 0.1 + 0.35 s，
    # 超过 0.4 s 的租约，另一个副本就会接手还在跑的作业。按节拍续租时每 0.1 s 到一次
    renew = harness.store.heartbeat

    async def slow_heartbeat(owner: str, trace_ids: list[str]) -> Any:
        await asyncio.sleep(0.05)
        reply = await renew(owner, trace_ids)
        await asyncio.sleep(0.3)
        return reply

    monkeypatch.setattr(harness.store, "heartbeat", slow_heartbeat)
    trace_id = await _submit_stuck_in_generation(client, harness)
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.0
    while loop.time() < until:
        assert await harness.store.claim_due("other", 10) == [], "活着的持有者丢了租约"
        await asyncio.sleep(0.02)
    record = await harness.store.get(trace_id)
    assert record is not None and record.runs == 1 and record.state is JobState.GENERATING


async def test_unavailable_ledger_refuses_with_503_and_retry_after(
    client: httpx.AsyncClient, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(*_: Any) -> None:
        raise LedgerUnavailable("作业账本暂不可用（admit）")

    monkeypatch.setattr(harness.store, "admit", unavailable)
    response = await client.post("/v1/reports", json=sales_request(CALLBACK))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "ledger_unavailable"
    assert harness.runner.running == 0


class _SlowHandle:
    """每个方法都比超时慢的假句柄。"""

    def __getattr__(self, method: str) -> Any:
        async def remote(*_: Any) -> None:
            await asyncio.sleep(1)

        return SimpleNamespace(remote=remote)


async def test_ledger_client_turns_repeated_timeouts_into_ledger_unavailable() -> None:
    client = LedgerClient(cast(Any, _SlowHandle()), JobPolicy(ledger_call_timeout_s=0.01))
    with pytest.raises(LedgerUnavailable, match="get"):
        await client.get("t-1")


async def test_runner_purges_finished_jobs_after_retention_off_the_request_path() -> None:
    # 保留期约 1.7 秒（测试用），扫描循环按 purge_interval_s 清除：送达的作业过期后查不到了
    h = Harness(
        jobs=FAST_JOBS
        | {"retention_days": 2 / 86400, "idempotency_ttl_s": 1, "purge_interval_s": 0.1}
    )
    try:
        async with h.client() as client:
            done = await _submit(client)
            await h.settle()
            assert (await _status(client, done))["status"] == "succeeded"
            h.llm.delay_s = 30
            running = await _submit(client)  # 一直在生成：不是“已结束”，不会被清除

            async def purged() -> bool:
                return (await client.get(f"/v1/reports/{done}")).status_code == 404

            await wait_until_async(purged, what="过期作业被清除", timeout_s=10)
            assert (await _status(client, running))["status"] in {"rendering", "generating"}
    finally:
        await h.aclose()


@pytest.mark.parametrize("op", ["advance", "finish"])
@pytest.mark.parametrize(
    "error",
    [
        LedgerUnavailable("作业账本暂不可用"),
        # 升级窗口里旧的 Ledger 副本不认新入口多传的参数
        TypeError("takes 4 positional arguments but 5 were given"),
    ],
    ids=["unavailable", "old-ledger-replica"],
)
async def test_a_ledger_outage_mid_job_reruns_it_instead_of_failing_it(
    client: httpx.AsyncClient,
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    op: str,
) -> None:
    """账本在作业中途记不下阶段或结果（暂不可用，或升级窗口里旧副本不认参数）：不出 failed
    结果；租约到期后重跑、成功。advance：生成慢，进入 generating 那次写不进；finish：快作业
    唯一的中途写入。

    chaos soak 在真实引擎上找到的：Ledger 副本重启那几秒里的作业以 ledger_unavailable 失败。
    """
    if op == "advance":
        harness.llm.delay_s = 0.6
    real = getattr(harness.store, op)
    failures = 0

    async def flaky(*args: Any) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise error
        return await real(*args)

    monkeypatch.setattr(harness.store, op, flaky)
    trace_id = await _submit(client)
    await _wait_sent(harness, 1)
    [(_, payload)] = harness.delivery.sent
    assert payload.status == "succeeded" and failures == 1
    body = await _status(client, trace_id)
    assert body["status"] == "succeeded"
    # 第二次执行（租约到期后领取）才成功
    assert [h["state"] for h in body["history"]].count("rendering") == 1
