"""业务指标（内存记录器）：受理、被拒、结局、各阶段耗时、token、账本操作、仪表、trace_id 来源。

真实的 Ray 导出与 Prometheus 抓取由 metrics 测试（tests/e2e/test_prometheus.py）验证。
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from serve_app.http.app import create_app
from serve_app.http.deps import IngressServices
from serve_app.models.reports import DeliveryOutcome, ReportJob
from tests.support.fakes import llm_error
from tests.support.harness import Harness
from tests.support.metrics import RecordingMetricFactory
from tests.support.sample import sales_request
from tests.support.waiting import wait_until_async

CALLBACK = "http://127.0.0.1:9/hooks/reports"
FAST_JOBS = {"sweep_interval_s": 0.05, "drain_timeout_s": 0.2, "max_active_jobs": 2}


@pytest.fixture
def recorder() -> RecordingMetricFactory:
    return RecordingMetricFactory()


@pytest.fixture
async def harness(recorder: RecordingMetricFactory) -> AsyncIterator[Harness]:
    h = Harness(jobs=FAST_JOBS, metrics=recorder.metrics())
    yield h
    await h.aclose()


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    async with harness.client() as http:
        yield http


async def _submit(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/reports", json=sales_request(CALLBACK))
    assert response.status_code == 202, response.text
    trace_id: str = response.json()["trace_id"]
    return trace_id


async def test_a_succeeded_job_is_counted_once_per_stage(
    harness: Harness, client: httpx.AsyncClient, recorder: RecordingMetricFactory
) -> None:
    # 生成慢过 0.5 秒：进入 generating 单独写一次账本（快作业没有这一次），四种写入都走到
    harness.llm.delay_s = 0.6
    await _submit(client)
    await harness.settle()
    assert recorder.count("reports_accepted", report_type="sales_weekly") == 1
    assert (
        recorder.count(
            "reports_finished",
            report_type="sales_weekly",
            status="succeeded",
            error_code="",
            priority="normal",
        )
        == 1
    )
    for stage in ("queue_wait", "render", "generate", "deliver"):
        [seconds] = recorder.observed("reports_stage_seconds", stage=stage, priority="normal")
        assert 0 <= seconds < 5, stage
    [total] = recorder.observed("reports_accept_to_callback_seconds", status="succeeded")
    assert 0 <= total < 5
    # FakeLLM 的用量：提示 3、生成 2 个 token
    assert recorder.count("reports_tokens", report_type="sales_weekly", kind="prompt") == 3
    assert recorder.count("reports_tokens", report_type="sales_weekly", kind="completion") == 2
    # 作业路径上的账本操作都计了时
    for op in ("admit", "advance", "finish", "record_delivery"):
        assert recorder.observed("reports_ledger_op_seconds", op=op, outcome="ok"), op


async def test_a_failed_generation_is_counted_with_its_error_code(
    harness: Harness, client: httpx.AsyncClient, recorder: RecordingMetricFactory
) -> None:
    harness.llm.error = llm_error()
    await _submit(client)
    await harness.settle()
    assert (
        recorder.count(
            "reports_finished",
            report_type="sales_weekly",
            status="failed",
            error_code="llm_error",
            priority="normal",
        )
        == 1
    )
    assert recorder.count("reports_tokens", report_type="sales_weekly", kind="prompt") == 0
    [_] = recorder.observed("reports_accept_to_callback_seconds", status="failed")


async def test_rejected_submissions_are_counted_by_status(
    harness: Harness, client: httpx.AsyncClient, recorder: RecordingMetricFactory
) -> None:
    bad = sales_request(CALLBACK)
    bad["report_type"] = "no_such_type"
    assert (await client.post("/v1/reports", json=bad)).status_code == 422
    huge = "x" * (harness.settings.max_body_bytes + 1)
    too_big = await client.post(
        "/v1/reports", content=huge, headers={"Content-Type": "application/json"}
    )
    assert too_big.status_code == 413
    # 查询等其他路径的 4xx 不算提交被拒
    assert (await client.get(f"/v1/reports/{uuid.uuid4()}")).status_code == 404
    assert recorder.count("reports_rejected", reason="422") == 1
    assert recorder.count("reports_rejected", reason="413") == 1
    assert sum(v for (name, _), v in recorder.counters.items() if name == "reports_rejected") == 2
    assert recorder.count("reports_accepted", report_type="sales_weekly") == 0


async def test_overload_is_counted_as_429_and_gauges_follow_the_ledger(
    harness: Harness, client: httpx.AsyncClient, recorder: RecordingMetricFactory
) -> None:
    harness.llm.delay_s = 30
    await _submit(client)
    await _submit(client)
    full = await client.post("/v1/reports", json=sales_request(CALLBACK))
    assert full.status_code == 429
    assert recorder.count("reports_rejected", reason="429") == 1
    await _gauges_become(harness, recorder, active=2, pending=0, undelivered=0)
    # 取消两个作业：结果是 cancelled，仪表回到 0
    for trace_id in list(harness.runner._tasks):
        assert (await client.delete(f"/v1/reports/{trace_id}")).status_code == 202
    await harness.settle()
    await _gauges_become(harness, recorder, active=0, pending=0, undelivered=0)
    assert (
        recorder.count(
            "reports_finished",
            report_type="sales_weekly",
            status="cancelled",
            error_code="cancelled",
            priority="normal",
        )
        == 2
    )


async def test_undelivered_and_pending_redeliveries_show_in_the_gauges(
    recorder: RecordingMetricFactory,
) -> None:
    harness = Harness(
        jobs={**FAST_JOBS, "redelivery_schedule_s": (30,), "redelivery_horizon_s": 60},
        metrics=recorder.metrics(),
    )
    async with harness.serving() as client:
        harness.delivery.outcome = DeliveryOutcome(delivered=False, attempts=1, error="x")
        await _submit(client)
        await wait_until_async(
            functools.partial(_pending, harness), what="作业等待重投", timeout_s=5, interval_s=0.02
        )
        await _gauges_become(harness, recorder, active=1, pending=1, undelivered=0)
        harness.delivery.outcome = DeliveryOutcome(
            delivered=False, attempts=1, status_code=410, error="gone", permanent=True
        )
        trace_id = harness.delivery.sent[0][1].trace_id
        assert (await client.post(f"/v1/reports/{trace_id}/redeliver")).status_code == 202
        await wait_until_async(
            functools.partial(_undelivered, harness),
            what="作业放弃重投",
            timeout_s=5,
            interval_s=0.02,
        )
        await _gauges_become(harness, recorder, active=0, pending=0, undelivered=1)


async def _gauges_become(
    harness: Harness,
    recorder: RecordingMetricFactory,
    *,
    active: int,
    pending: int,
    undelivered: int,
) -> None:
    """刷新仪表直到三个值都到位（扫描循环也在刷新，两次刷新可能交错）。"""
    expected = (active, pending, undelivered)

    async def settled() -> bool:
        await harness.runner.refresh_gauges()
        names = ("reports_jobs_active", "reports_redeliveries_pending", "reports_jobs_undelivered")
        return tuple(recorder.gauge_value(n) for n in names) == expected

    await wait_until_async(settled, what=f"仪表变为 {expected}", timeout_s=5, interval_s=0.02)


async def _pending(harness: Harness) -> bool:
    counts = await harness.store.counts()
    return counts.pending_redeliveries == 1


async def _undelivered(harness: Harness) -> bool:
    counts = await harness.store.counts()
    return counts.undelivered == 1


async def test_the_trace_id_comes_from_the_injected_source(harness: Harness) -> None:
    fixed = str(uuid.uuid4())
    services = IngressServices.build(
        harness.settings,
        render=harness.services.runner._pipeline._renderer,
        llm=harness.llm,
        delivery=harness.delivery,
        store=harness.store,
        owner="unit-2",
        trace_ids=lambda: fixed,
    )
    app = create_app(services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        first = await http.post("/v1/reports", json=sales_request(CALLBACK))
        assert first.json()["trace_id"] == fixed
        # 同一个 id 再来一次（调用方重复了 X-Request-ID）：另发一个，两个作业都在
        second = await http.post("/v1/reports", json=sales_request(CALLBACK, metadata={"n": 2}))
        assert second.status_code == 202
        other = second.json()["trace_id"]
        assert other != fixed
        record = await harness.store.get(other)
        assert record is not None and record.job.metadata == {"n": 2}
        await services.runner.drain(timeout_s=0.5)


async def test_claims_are_counted_by_kind(recorder: RecordingMetricFactory) -> None:
    """崩溃副本留下的作业（租约过期）记 produce；按重投表到期的回调记 redeliver。"""
    harness = Harness(
        jobs={**FAST_JOBS, "lease_s": 0.4, "heartbeat_s": 0.1, "redelivery_schedule_s": (0.1,)},
        metrics=recorder.metrics(),
    )
    async with harness.serving():
        job = ReportJob(
            trace_id="orphan",
            report_type="sales_weekly",
            inputs=dict(sales_request(CALLBACK)["inputs"]),
            length="short",
            callback_url=CALLBACK,
            created_at=datetime.now(UTC),
        )
        # 第一轮投递失败：按重投表 0.1 秒后再投一次（第二轮照常送达）
        harness.delivery.outcome = DeliveryOutcome(delivered=False, attempts=1, error="x")
        await harness.store.admit(job, "replica-that-crashed", None)
        harness.runner.start()
        await _wait_sent(harness, 1)
        harness.delivery.outcome = DeliveryOutcome(delivered=True, attempts=1, status_code=200)
        await _wait_sent(harness, 2)
        await harness.settle()
    assert recorder.count("reports_jobs_recovered", kind="produce") == 1
    assert recorder.count("reports_jobs_recovered", kind="redeliver") == 1
    assert recorder.count("reports_jobs_recovered", kind="deliver") == 0


async def _wait_sent(harness: Harness, count: int) -> None:
    """等投递阶段收到 count 次投递。"""

    async def sent() -> bool:
        return len(harness.delivery.sent) >= count

    await wait_until_async(sent, what=f"第 {count} 次投递", timeout_s=5, interval_s=0.02)
