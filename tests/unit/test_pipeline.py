"""流水线：每个作业恰好一次终态回调，失败带正确错误码与堆栈日志。"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from loguru import logger

from serve_app.core.errors import (
    INTERNAL_ERROR_MESSAGE,
    ErrorCode,
    LLMError,
    LLMTimeout,
    RenderError,
)
from serve_app.ledger.records import JobState, StateChange
from serve_app.models.reports import DeliveryOutcome, ReportJob
from serve_app.models.templates import RenderedPrompt
from serve_app.services.pipeline import ReportPipeline
from tests.support.fakes import FakeLLM, LocalRenderStage, RecordingDelivery
from tests.support.logs import captured_logs
from tests.support.sample import load_catalog


def _job() -> ReportJob:
    spec = load_catalog().get("sales_weekly")
    return ReportJob(
        trace_id="trace-123",
        report_type="sales_weekly",
        inputs=dict(spec.sample_inputs),
        length="short",
        callback_url="http://127.0.0.1:9/hook",
        metadata={"order": 7},
        created_at=datetime.now(UTC),
    )


async def _run(pipeline: ReportPipeline, job: ReportJob) -> DeliveryOutcome:
    """不经账本执行一个作业：产生结果再投递（JobRunner 在此之外记账）。"""
    with logger.contextualize(trace_id=job.trace_id):
        return await pipeline.deliver(job, await pipeline.produce(job))


def _pipeline(
    llm: FakeLLM, delivery: RecordingDelivery, render_error: BaseException | None = None
) -> ReportPipeline:
    return ReportPipeline(LocalRenderStage(load_catalog(), render_error), llm, delivery)


async def test_success_delivers_report_and_logs_with_trace_id() -> None:
    delivery = RecordingDelivery()
    with captured_logs() as logs:
        outcome = await _run(_pipeline(FakeLLM(), delivery), _job())
    assert outcome.delivered
    [(_, payload)] = delivery.sent
    assert payload.status == "succeeded" and payload.report is not None
    assert payload.report.usage.completion_tokens == 2
    assert payload.metadata == {"order": 7}
    assert logs and all(r["trace_id"] == "trace-123" for r in logs)


@pytest.mark.parametrize(
    ("llm", "render_error", "code"),
    [
        (FakeLLM(), RenderError("模板坏了"), ErrorCode.RENDER_ERROR),
        (FakeLLM(error=LLMError("引擎错误")), None, ErrorCode.LLM_ERROR),
        (FakeLLM(error=LLMTimeout("超时")), None, ErrorCode.LLM_TIMEOUT),
        (FakeLLM(content="  \n"), None, ErrorCode.LLM_ERROR),
        (FakeLLM(error=RuntimeError("db password=hunter2")), None, ErrorCode.INTERNAL_ERROR),
    ],
)
async def test_every_failure_ends_in_one_failed_callback(
    llm: FakeLLM, render_error: BaseException | None, code: ErrorCode
) -> None:
    delivery = RecordingDelivery()
    with captured_logs() as logs:
        await _run(_pipeline(llm, delivery, render_error), _job())
    [(_, payload)] = delivery.sent
    assert payload.status == "failed" and payload.report is None
    assert payload.error is not None and payload.error.code is code
    if code is ErrorCode.INTERNAL_ERROR:
        # 内部细节只进日志，不给调用方
        assert payload.error.message == INTERNAL_ERROR_MESSAGE
    failures = [r for r in logs if r["level"] == "ERROR"]
    assert failures and failures[0]["exception"] is not None
    assert all(r["trace_id"] == "trace-123" for r in logs)


async def test_undelivered_round_is_logged_for_redelivery() -> None:
    delivery = RecordingDelivery(
        outcome=DeliveryOutcome(delivered=False, attempts=6, status_code=503, error="HTTP 503")
    )
    with captured_logs() as logs:
        outcome = await _run(_pipeline(FakeLLM(), delivery), _job())
    assert not outcome.delivered
    # 本轮未送达只是告警：账本随后按重投表继续（见 test_ledger / 故障层）
    loud = [r for r in logs if "本轮未送达" in r["message"]]
    assert loud and loud[0]["level"] == "WARNING" and loud[0]["trace_id"] == "trace-123"


async def test_callback_stage_crash_does_not_escape() -> None:
    delivery = RecordingDelivery(error=RuntimeError("actor died"))
    with captured_logs() as logs:
        outcome = await _run(_pipeline(FakeLLM(), delivery), _job())
    assert not outcome.delivered
    assert any("本轮未送达" in r["message"] and r["exception"] for r in logs)


class _StageLog:
    """记下流水线每次要求记录阶段：(阶段, 途经的阶段, 那时渲染是否已完成)。"""

    def __init__(self) -> None:
        self.rendered = 0
        self.calls: list[tuple[JobState, StateChange | None, int]] = []

    async def __call__(self, state: JobState, passed: StateChange | None) -> None:
        self.calls.append((state, passed, self.rendered))


class _CountingRender(LocalRenderStage):
    def __init__(self, delay_s: float) -> None:
        super().__init__(load_catalog(), delay_s=delay_s)
        self.log: _StageLog | None = None

    async def render(self, job: ReportJob) -> RenderedPrompt:
        rendered = await super().render(job)
        assert self.log is not None
        self.log.rendered += 1
        return rendered


async def _stages(render_delay_s: float, note_after_s: float) -> _StageLog:
    render = _CountingRender(render_delay_s)
    log = _StageLog()
    render.log = log
    pipeline = ReportPipeline(
        render, FakeLLM(), RecordingDelivery(), rendering_note_after_s=note_after_s
    )
    payload = await pipeline.produce(_job(), log)
    assert payload.status == "succeeded"
    return log


async def test_a_fast_render_is_recorded_together_with_generating() -> None:
    """渲染很快：不单为 rendering 写账本，它的时刻随进入 generating 的那一次记下（少一次往返）。"""
    before = datetime.now(UTC)
    log = await _stages(render_delay_s=0.0, note_after_s=5.0)
    [(state, passed, rendered)] = log.calls
    assert state is JobState.GENERATING and rendered == 1
    assert passed is not None and passed.state is JobState.RENDERING
    assert before <= passed.at <= datetime.now(UTC)


async def test_a_slow_render_is_recorded_while_it_runs() -> None:
    """渲染慢了：先记 rendering（状态查询看得到卡在渲染），之后再记 generating。"""
    before = datetime.now(UTC)
    log = await _stages(render_delay_s=0.3, note_after_s=0.05)
    [(rendering, own, rendered), (generating, passed, after)] = log.calls
    assert (rendering, rendered) == (JobState.RENDERING, 0)
    assert (generating, passed, after) == (JobState.GENERATING, None, 1)
    # rendering 的时刻是渲染开始的那一刻，不是记下它的时候
    assert own is not None and own.state is JobState.RENDERING
    assert before <= own.at < before + timedelta(seconds=0.05)
