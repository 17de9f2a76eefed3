"""入口合并并发的渲染调用：一批一次 TemplateRenderer.render_many，各作业拿回自己的提示词或错误。

真实 Ray Serve 上的渲染由 e2e 与故障层证明（每个作业都经这条路）。
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from ray.serve.handle import DeploymentHandle

from deployments.handles.stages import HandleRenderStage
from deployments.render import TemplateRenderer
from serve_app.core.errors import RenderError
from serve_app.models.reports import ReportJob, utc_now
from serve_app.prompting.renderer import PromptRenderer
from tests.support.sample import load_catalog, make_settings


class _Method:
    """假句柄的一个端点：remote() 在本进程里调用真实的 TemplateRenderer，记下每批的大小。"""

    def __init__(self, renderer: TemplateRenderer) -> None:
        self._renderer = renderer
        self.batches: list[int] = []

    async def remote(self, requests: list[Any]) -> list[tuple[bool, Any]]:
        self.batches.append(len(requests))
        await asyncio.sleep(0.01)  # 一次往返：这期间来的渲染排进下一批
        return await self._renderer.render_many(requests)


class _Handle:
    def __init__(self, renderer: TemplateRenderer) -> None:
        self.render_many = _Method(renderer)


def _job(index: int) -> ReportJob:
    inputs = load_catalog().get("sales_weekly").sample_inputs
    return ReportJob(
        trace_id=f"trace-{index}",
        report_type="sales_weekly",
        inputs={**inputs, "sales_data": f"第 {index} 份"},
        length="short",
        callback_url="http://127.0.0.1:9/hooks",
        created_at=utc_now(),
    )


@pytest.fixture
def stage() -> tuple[HandleRenderStage, _Method]:
    handle = _Handle(TemplateRenderer(make_settings()))
    return HandleRenderStage(cast(DeploymentHandle[Any], handle)), handle.render_many


async def test_concurrent_renders_share_one_handle_call(
    stage: tuple[HandleRenderStage, _Method],
) -> None:
    render, method = stage
    jobs = [_job(i) for i in range(40)]
    prompts = await asyncio.gather(*(render.render(job) for job in jobs))
    # 同一轮事件循环里来的 40 个合成一批：一次句柄调用
    assert method.batches == [40]
    local = PromptRenderer(load_catalog())
    for job, prompt in zip(jobs, prompts, strict=True):
        assert prompt == local.render(job.report_type, job.inputs, job.length)
        assert f"第 {job.trace_id.split('-')[1]} 份" in prompt.user


async def test_a_broken_job_fails_alone_in_its_batch(
    stage: tuple[HandleRenderStage, _Method],
) -> None:
    render, method = stage
    broken = _job(1)
    broken = broken.model_copy(update={"inputs": {"period": "本周"}})  # 缺必填的 region
    results = await asyncio.gather(
        render.render(_job(0)),
        render.render(broken),
        render.render(_job(2)),
        return_exceptions=True,
    )
    assert method.batches == [3]
    assert isinstance(results[1], RenderError) and "sales_weekly" in str(results[1])
    assert all(not isinstance(r, BaseException) for r in (results[0], results[2]))


async def test_renders_arriving_during_a_round_trip_form_the_next_batch(
    stage: tuple[HandleRenderStage, _Method],
) -> None:
    render, method = stage
    first = asyncio.ensure_future(render.render(_job(0)))
    await asyncio.sleep(0)  # 第一批已发出
    rest = [asyncio.ensure_future(render.render(_job(i))) for i in range(1, 6)]
    await asyncio.gather(first, *rest)
    assert sum(method.batches) == 6 and method.batches[0] == 1
