"""调用方给的期限与优先级：契约（422 / 403）、状态里可见、期限在每个阶段都算数。"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from serve_app.models.reports import ENGINE_PRIORITY
from tests.support.harness import Harness
from tests.support.sample import sales_request
from tests.support.waiting import wait_until_async

CALLBACK = "http://127.0.0.1:9/hooks/reports"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"priority": "urgent"}, "'high', 'normal' or 'low'"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"deadline_s": 7 * 86400 + 1}, "deadline_s"),
    ],
)
async def test_a_bad_priority_or_deadline_is_a_422_that_says_what_is_allowed(
    extra: dict[str, Any], needle: str
) -> None:
    async with Harness().serving() as client:
        response = await client.post("/v1/reports", json=sales_request(CALLBACK, **extra))
    assert response.status_code == 422, response.text
    assert needle in response.json()["error"]["message"]


async def test_high_priority_is_only_for_the_configured_callers() -> None:
    harness = Harness(
        api_keys="ops:ops-key,batch:batch-key",
        auth_required=True,
        jobs={"high_priority_callers": ["ops"]},
    )
    async with harness.serving() as client:
        refused = await client.post(
            "/v1/reports",
            json=sales_request(CALLBACK, priority="high"),
            headers={"Authorization": "Bearer batch-key"},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert "priority=high" in refused.json()["error"]["message"]
        allowed = await client.post(
            "/v1/reports",
            json=sales_request(CALLBACK, priority="high"),
            headers={"Authorization": "Bearer ops-key"},
        )
        assert allowed.status_code == 202, allowed.text
        low = await client.post(
            "/v1/reports",
            json=sales_request(CALLBACK, priority="low"),
            headers={"Authorization": "Bearer batch-key"},
        )
        assert low.status_code == 202


async def test_status_shows_priority_and_deadline_and_the_engine_gets_the_priority() -> None:
    harness = Harness()
    async with harness.serving() as client:
        response = await client.post(
            "/v1/reports", json=sales_request(CALLBACK, priority="low", deadline_s=600)
        )
        trace_id = response.json()["trace_id"]
        await harness.settle()
        body = (await client.get(f"/v1/reports/{trace_id}")).json()
    assert body["status"] == "succeeded" and body["priority"] == "low"
    created = datetime.fromisoformat(body["created_at"])
    assert datetime.fromisoformat(body["deadline_at"]) - created == timedelta(seconds=600)
    [(_, prompt)] = harness.llm.prompts
    assert prompt.engine_priority == ENGINE_PRIORITY["low"]


async def test_the_default_deadline_setting_applies_when_the_request_gives_none() -> None:
    harness = Harness(jobs={"default_deadline_s": 120})
    async with harness.serving() as client:
        trace_id = (await client.post("/v1/reports", json=sales_request(CALLBACK))).json()[
            "trace_id"
        ]
        body = (await client.get(f"/v1/reports/{trace_id}")).json()
    created = datetime.fromisoformat(body["created_at"])
    assert datetime.fromisoformat(body["deadline_at"]) - created == timedelta(seconds=120)


async def _expired_once(harness: Harness, trace_id: str) -> None:
    async def delivered() -> bool:
        return any(p.trace_id == trace_id for _, p in harness.delivery.sent)

    await wait_until_async(delivered, what="过期回调", timeout_s=5)
    await harness.settle()
    [payload] = [p for _, p in harness.delivery.sent if p.trace_id == trace_id]
    assert payload.status == "expired" and payload.error is not None
    assert payload.error.code == "deadline_exceeded"


async def test_a_queued_job_past_its_deadline_never_starts() -> None:
    """名额被占满（1 个）时排队的作业到期：不再开始，引擎一次也没见过它。"""
    harness = Harness(jobs={"max_concurrent_per_replica": 1})
    harness.llm.delay_s = 1.0
    async with harness.serving() as client:
        await client.post("/v1/reports", json=sales_request(CALLBACK))
        queued = await client.post("/v1/reports", json=sales_request(CALLBACK, deadline_s=0.2))
        trace_id = queued.json()["trace_id"]
        await _expired_once(harness, trace_id)
        assert trace_id not in {t for t, _ in harness.llm.prompts}
        body = (await client.get(f"/v1/reports/{trace_id}")).json()
    assert body["status"] == "expired" and body["callback"]["state"] == "delivered"


async def test_a_generating_job_past_its_deadline_is_aborted_in_the_engine() -> None:
    harness = Harness()
    harness.llm.delay_s = 30
    async with harness.serving() as client:
        response = await client.post("/v1/reports", json=sales_request(CALLBACK, deadline_s=0.3))
        trace_id = response.json()["trace_id"]
        await _expired_once(harness, trace_id)
        # 假 LLM 要睡 30 秒：5 秒内收尾说明生成被取消（集群里这就是 vLLM 的 abort）
        assert trace_id in {t for t, _ in harness.llm.prompts}
        body = (await client.get(f"/v1/reports/{trace_id}")).json()
    assert body["status"] == "expired"
    assert [h["state"] for h in body["history"]][-3:] == ["generating", "delivering", "expired"]


async def test_a_job_whose_result_exists_is_delivered_even_after_its_deadline() -> None:
    harness = Harness()
    harness.delivery.delay_s = 0.5  # 接收方慢：期限在投递途中到了
    async with harness.serving() as client:
        response = await client.post("/v1/reports", json=sales_request(CALLBACK, deadline_s=0.2))
        trace_id = response.json()["trace_id"]
        await harness.settle()
        body = (await client.get(f"/v1/reports/{trace_id}")).json()
    assert body["status"] == "succeeded"
    [(_, payload)] = harness.delivery.sent
    assert payload.status == "succeeded"


async def test_high_priority_overtakes_a_queued_backlog_in_the_runner() -> None:
    """名额为 1：第一份 low 占着名额时又排了 4 份 low 与一份 high，high 下一个就执行。

    引擎在全部交上之前不放行（gate），排队的次序不取决于这台机器交得多快。"""
    harness = Harness(jobs={"max_concurrent_per_replica": 1})
    harness.llm.gate = gate = asyncio.Event()
    async with harness.serving() as client:
        for _ in range(5):
            await client.post("/v1/reports", json=sales_request(CALLBACK, priority="low"))
        high = await client.post("/v1/reports", json=sales_request(CALLBACK, priority="high"))
        high_id = high.json()["trace_id"]
        gate.set()
        await harness.settle(timeout_s=10)
    order = [t for t, _ in harness.llm.prompts]
    assert len(order) == 6 and order.index(high_id) == 1, order
