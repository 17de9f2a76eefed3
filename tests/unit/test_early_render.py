"""受理时就开始渲染：有空名额的作业渲染与写账本并行，执行路上少一次渲染往返与一次账本往返。"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from serve_app.core.errors import RenderError
from serve_app.ledger.records import JobState
from serve_app.ledger.rows import passed_states
from serve_app.models.reports import ReportJob
from serve_app.models.templates import RenderedPrompt
from tests.support.harness import Harness
from tests.support.sample import SUCCEEDED_HISTORY, sales_request
from tests.support.waiting import wait_until_async

CALLBACK = "http://127.0.0.1:9/hooks/reports"


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(jobs={"max_concurrent_per_replica": 1, "drain_timeout_s": 0.2})
    yield h
    await h.aclose()


def _record_advances(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """记下每个作业向账本推进了哪些阶段（一次推进一次账本往返）。"""
    advances: dict[str, list[str]] = {}
    real = harness.store.advance

    async def advance(trace_id: str, owner: str, state: JobState) -> Any:
        advances.setdefault(trace_id, []).append(str(state))
        return await real(trace_id, owner, state)

    monkeypatch.setattr(harness.store, "advance", advance)
    return advances


async def _submit(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post("/v1/reports", json=sales_request(CALLBACK), headers=headers)


async def _history(client: httpx.AsyncClient, trace_id: str) -> list[dict[str, Any]]:
    body = (await client.get(f"/v1/reports/{trace_id}")).json()
    history: list[dict[str, Any]] = body["history"]
    return history


async def test_a_job_with_a_free_slot_renders_while_the_ledger_admits_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendering = asyncio.Event()
    real_render, real_admit = harness.render.render, harness.store.admit

    async def render(job: ReportJob) -> RenderedPrompt:
        rendering.set()
        return await real_render(job)

    async def admit(*args: Any) -> Any:
        # 渲染先于账本的答复开始：顺序执行时这里等不到，受理超时失败
        async with asyncio.timeout(2):
            await rendering.wait()
        return await real_admit(*args)

    monkeypatch.setattr(harness.render, "render", render)
    monkeypatch.setattr(harness.store, "admit", admit)
    advances = _record_advances(harness, monkeypatch)
    async with harness.client() as client:
        response = await _submit(client)
        assert response.status_code == 202, response.text
        trace_id = response.json()["trace_id"]
        await harness.settle()
        history = await _history(client, trace_id)
    # 只推进一次（直接到 generating），历史里 rendering 照样在，与 generating 同一时刻
    assert advances[trace_id] == ["generating"]
    assert [h["state"] for h in history] == SUCCEEDED_HISTORY
    assert history[1]["at"] == history[2]["at"]
    assert harness.delivery.sent[-1][1].status == "succeeded"


async def test_a_queued_job_renders_only_when_it_gets_its_slot(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.llm.delay_s = 0.3
    renders: list[str] = []
    real_render = harness.render.render

    async def render(job: ReportJob) -> RenderedPrompt:
        renders.append(job.trace_id)
        return await real_render(job)

    monkeypatch.setattr(harness.render, "render", render)
    advances = _record_advances(harness, monkeypatch)
    async with harness.client() as client:
        first = (await _submit(client)).json()["trace_id"]

        async def generating() -> bool:
            return len(harness.llm.prompts) == 1

        await wait_until_async(generating, what="第一个作业在生成", timeout_s=5)
        second = (await _submit(client)).json()["trace_id"]
        # 唯一的名额被第一个占着：第二个受理时不提前渲染（不为排队的作业占着提示词）
        assert renders == [first]
        await harness.settle()
        history = await _history(client, second)
    assert renders == [first, second]
    assert advances[first] == ["generating"]
    assert advances[second] == ["rendering", "generating"]
    assert [h["state"] for h in history] == SUCCEEDED_HISTORY


async def test_an_early_render_that_fails_ends_the_job_failed(harness: Harness) -> None:
    harness.render.error = RenderError("模板坏了")
    async with harness.client() as client:
        response = await _submit(client)
        assert response.status_code == 202
        await harness.settle()
    [(_, payload)] = harness.delivery.sent
    assert payload.status == "failed" and payload.error is not None
    assert payload.error.code == "render_error" and "模板坏了" in payload.error.message
    assert harness.llm.prompts == []


async def test_a_replayed_admission_cancels_its_early_render(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    cancelled: list[str] = []
    real_render = harness.render.render
    slow = asyncio.Event()

    async def render(job: ReportJob) -> RenderedPrompt:
        started.append(job.trace_id)
        if len(started) == 2:
            try:
                await slow.wait()  # 第二次（幂等重放）的渲染：一直等，直到被取消
            except asyncio.CancelledError:
                cancelled.append(job.trace_id)
                raise
        return await real_render(job)

    monkeypatch.setattr(harness.render, "render", render)
    async with harness.client() as client:
        first = await _submit(client, **{"Idempotency-Key": "order-7"})
        await harness.settle()
        replay = await _submit(client, **{"Idempotency-Key": "order-7"})
        assert replay.headers["Idempotent-Replayed"] == "true"
        await asyncio.sleep(0)  # 让取消送达渲染任务
    assert first.json()["trace_id"] == replay.json()["trace_id"]
    assert len(started) == 2 and len(cancelled) == 1
    assert len(harness.llm.prompts) == 1 and len(harness.delivery.sent) == 1


@pytest.mark.parametrize(
    ("current", "target", "recorded"),
    [
        ("accepted", JobState.RENDERING, ["rendering"]),
        ("accepted", JobState.GENERATING, ["rendering", "generating"]),
        ("rendering", JobState.GENERATING, ["generating"]),
        # 重跑：从上一次执行留下的 generating 回到 rendering，只记目标
        ("generating", JobState.RENDERING, ["rendering"]),
        # 没渲染就结束（失败、到期）：不补记生成阶段
        ("accepted", JobState.DELIVERING, ["delivering"]),
    ],
)
def test_the_ledger_fills_in_only_skipped_generation_stages(
    current: str, target: JobState, recorded: list[str]
) -> None:
    assert [str(s) for s in passed_states(current, target)] == recorded


def test_history_entries_filled_in_share_one_moment() -> None:
    from serve_app.ledger.rows import state_columns

    row = {"state": "accepted", "history_json": '[{"state": "accepted", "at": "x"}]'}
    columns = state_columns(row, JobState.GENERATING, 1_800_000_000.0)
    import json

    entries = json.loads(columns["history_json"])
    assert [e["state"] for e in entries] == ["accepted", "rendering", "generating"]
    assert entries[1]["at"] == entries[2]["at"]
    assert datetime.fromisoformat(entries[2]["at"]).timestamp() == 1_800_000_000.0
