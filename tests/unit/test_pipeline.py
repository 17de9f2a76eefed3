"""流水线：每个作业恰好一次终态回调，失败带正确错误码与堆栈日志。"""

from __future__ import annotations

import asyncio
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
from serve_app.models.reports import CallbackPayload, Completion, DeliveryOutcome, ReportJob
from serve_app.models.templates import RenderedPrompt
from serve_app.services.pipeline import ReportPipeline, StageInterrupted, StageNotes
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
    """记下流水线每次要求记录阶段：(阶段, 途经的阶段, 那时渲染了几次, 那时生成了几次)。"""

    def __init__(self) -> None:
        self.rendered = 0
        self.generated = 0
        self.calls: list[tuple[JobState, tuple[StateChange, ...], int, int]] = []
        self.called_at: list[datetime] = []

    async def __call__(self, state: JobState, passed: tuple[StateChange, ...]) -> None:
        self.calls.append((state, passed, self.rendered, self.generated))
        self.called_at.append(datetime.now(UTC))


class _CountingRender(LocalRenderStage):
    def __init__(self, delay_s: float, log: _StageLog) -> None:
        super().__init__(load_catalog(), delay_s=delay_s)
        self.log = log

    async def render(self, job: ReportJob) -> RenderedPrompt:
        rendered = await super().render(job)
        self.log.rendered += 1
        return rendered


class _CountingLLM(FakeLLM):
    log: _StageLog | None = None

    async def generate(self, prompt: RenderedPrompt, *, trace_id: str) -> Completion:
        completion = await super().generate(prompt, trace_id=trace_id)
        assert self.log is not None
        self.log.generated += 1
        return completion


async def _stages(
    render_delay_s: float = 0.0,
    generate_delay_s: float = 0.0,
    note_after_s: float = 5.0,
    error: BaseException | None = None,
) -> tuple[_StageLog, CallbackPayload, tuple[StateChange, ...]]:
    log = _StageLog()
    llm = _CountingLLM(delay_s=generate_delay_s, error=error)
    llm.log = log
    pipeline = ReportPipeline(
        _CountingRender(render_delay_s, log),
        llm,
        RecordingDelivery(),
        stage_note_after_s=note_after_s,
    )
    notes = StageNotes(log)
    payload = await pipeline.produce(_job(), notes)
    return log, payload, tuple(notes.passed)


def _states(changes: tuple[StateChange, ...]) -> list[JobState]:
    return [c.state for c in changes]


async def test_fast_stages_are_recorded_together_with_the_result() -> None:
    """渲染与生成都很快：不单为它们写账本，各自开始的时刻随结果一起记（每个作业少两次往返）。"""
    before = datetime.now(UTC)
    log, payload, passed = await _stages()
    assert log.calls == []
    assert payload.status == "succeeded"
    assert _states(passed) == [JobState.RENDERING, JobState.GENERATING]
    rendering, generating = passed
    assert before <= rendering.at <= generating.at <= datetime.now(UTC)


async def test_a_fast_failure_still_carries_the_stages_it_passed() -> None:
    """生成很快就失败：failed 结果的历史里照样有 rendering 与 generating。"""
    log, payload, passed = await _stages(error=LLMError("boom"))
    assert log.calls == []
    assert payload.status == "failed"
    assert _states(passed) == [JobState.RENDERING, JobState.GENERATING]


async def test_a_slow_render_is_recorded_while_it_runs() -> None:
    """渲染慢了：先记 rendering（状态查询看得到卡在渲染）；之后很快的生成随结果一起记。"""
    log, payload, passed = await _stages(render_delay_s=0.3, note_after_s=0.05)
    [(state, own, rendered, _)] = log.calls
    assert (state, rendered) == (JobState.RENDERING, 0)
    # rendering 的时刻是渲染开始的那一刻，不是（至少 0.05 秒后）记下它的时候
    assert _states(own) == [JobState.RENDERING]
    [called_at] = log.called_at
    assert own[0].at <= called_at - timedelta(seconds=0.05)
    assert _states(passed) == [JobState.GENERATING]


async def test_a_slow_generation_is_recorded_while_it_runs() -> None:
    """生成慢了：生成还在进行时记下 generating，连同途经的 rendering，时刻都是各自开始的那一刻；
    结果那次就没有要补记的了。"""
    log, payload, passed = await _stages(generate_delay_s=0.3, note_after_s=0.05)
    [(state, noted, rendered, generated)] = log.calls
    assert (state, rendered, generated) == (JobState.GENERATING, 1, 0)
    assert _states(noted) == [JobState.RENDERING, JobState.GENERATING]
    # generating 的时刻是生成开始的那一刻，不是（至少 0.05 秒后）记下它的时候
    [called_at] = log.called_at
    assert noted[0].at <= noted[1].at <= called_at - timedelta(seconds=0.05)
    assert passed == ()
    assert payload.status == "succeeded"


async def test_an_interrupted_slow_generation_is_aborted() -> None:
    """慢的生成在记下 generating 时发现作业已取消：生成被中止（不再完成），
    StageInterrupted 交给执行器。"""
    log = _StageLog()
    llm = _CountingLLM(delay_s=0.3)
    llm.log = log

    async def cancelled(_: JobState, __: tuple[StateChange, ...]) -> None:
        raise StageInterrupted("cancelled")

    pipeline = ReportPipeline(
        LocalRenderStage(load_catalog()), llm, RecordingDelivery(), stage_note_after_s=0.05
    )
    with pytest.raises(StageInterrupted):
        await pipeline.produce(_job(), StageNotes(cancelled))
    await asyncio.sleep(0.4)
    assert len(llm.prompts) == 1 and log.generated == 0
