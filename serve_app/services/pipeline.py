"""报告流水线：渲染 → 生成 → 回调。作业的持久化与调度见 services/runner.py。"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from loguru import logger

from serve_app.core.errors import (
    InvalidOutput,
    LedgerUnavailable,
    LLMError,
    OutputTruncated,
    error_info,
)
from serve_app.core.metrics import ReportMetrics
from serve_app.ledger.records import JobState, StateChange
from serve_app.llm.port import LLMClient
from serve_app.models.reports import (
    ENGINE_PRIORITY,
    CallbackPayload,
    Completion,
    DeliveryOutcome,
    ReportJob,
)
from serve_app.models.templates import RenderedPrompt
from serve_app.prompting.output_check import checked
from serve_app.services.stages import DeliveryStage, RenderStage

# 记录进入某个阶段（与该阶段的工作并行；作业被取消或租约丢失时抛 StageInterrupted）。
# 第二个参数是途经而没有单独记下的阶段（见 ReportPipeline._render），与这一次一起记；
# 与第一个参数是同一阶段时，它就是这一阶段自己的那一条（带着真实的开始时刻）
StageHook = Callable[[JobState, StateChange | None], Awaitable[None]]

# 渲染在这么久之内完成的（几乎总是：毫秒级）不单为 rendering 写一次账本
RENDERING_NOTE_AFTER_S = 0.5


class StageInterrupted(Exception):
    """作业在阶段之间被打断：已请求取消（cancelled）或租约已归别的副本（lost）。"""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _no_hook(_: JobState, __: StateChange | None) -> None:
    return None


async def _alongside[T](stage: Awaitable[None], work: Awaitable[T]) -> T:
    """记录阶段（一次账本往返）与这一步的工作并行，不让往返挡在每个作业的路上。

    阶段判定为打断（已取消、租约已丢）时取消工作并抛 StageInterrupted：生成刚开始就被中止，
    vLLM 随之中止请求。
    """
    task = asyncio.ensure_future(work)
    try:
        await stage
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    return await task


class ReportPipeline:
    """一个作业的两步：产生结果（成功或失败的回调载荷），投递回调。"""

    def __init__(
        self,
        renderer: RenderStage,
        llm: LLMClient,
        delivery: DeliveryStage,
        metrics: ReportMetrics | None = None,
        output_retries: int = 1,
        rendering_note_after_s: float = RENDERING_NOTE_AFTER_S,
    ) -> None:
        self._renderer = renderer
        self._rendering_note_after_s = rendering_note_after_s
        self._llm = llm
        self._delivery = delivery
        self._metrics = metrics or ReportMetrics()
        self._output_retries = output_retries

    async def _timed[T](self, stage: str, job: ReportJob, work: Awaitable[T]) -> T:
        """执行一步并把耗时记进 reports_stage_seconds（按阶段与优先级；失败的也记）。"""
        started = time.perf_counter()
        try:
            return await work
        finally:
            self._metrics.stage_seconds.observe(
                time.perf_counter() - started, {"stage": stage, "priority": job.priority}
            )

    async def produce(self, job: ReportJob, on_stage: StageHook = _no_hook) -> CallbackPayload:
        """渲染并生成；任何失败都变成 failed 载荷（被打断时抛 StageInterrupted）。"""
        logger.info("作业开始：report_type={} length={}", job.report_type, job.length)
        try:
            # LLM 缩到零时在这里等它冷启动：等待算进 queue_wait，不占生成的超时
            await self._llm.wait_warm()
            self._metrics.stage_seconds.observe(
                max((datetime.now(UTC) - job.created_at).total_seconds(), 0.0),
                {"stage": "queue_wait", "priority": job.priority},
            )
            rendered, passed = await self._render(job, on_stage)
            prompt = rendered.model_copy(update={"engine_priority": ENGINE_PRIORITY[job.priority]})
            completion = await _alongside(
                on_stage(JobState.GENERATING, passed),
                self._timed("generate", job, self._generate_checked(job, prompt)),
            )
        except (StageInterrupted, LedgerUnavailable):
            # 账本暂不可用（推进阶段写不进去）不是作业的错：不出 failed 结果，由执行器中断本次
            # 执行、租约到期后重跑（chaos soak 找到的：Ledger 副本重启时作业曾以 failed 结束）
            raise
        except Exception as exc:  # noqa: BLE001 - 其余任何失败都必须变成 failed 回调
            code, message = error_info(exc)
            logger.exception("作业失败：{} - {}", code, message)
            return CallbackPayload.failed(job, code, message)
        return CallbackPayload.succeeded(job, completion)

    async def _render(
        self, job: ReportJob, on_stage: StageHook
    ) -> tuple[RenderedPrompt, StateChange | None]:
        """渲染 → (提示词, 途经而没有单独记下的 rendering)。

        渲染在 rendering_note_after_s 内完成的，不单为 rendering 写一次账本：它的时刻由进入
        generating 的那次一起记进历史（每个作业少一次账本往返，低负载时就是少一跳）。渲染慢了
        才先记 rendering（时刻同样是渲染开始的那一刻），状态查询看得到作业卡在哪一步。取消与
        租约照样在进入 generating 时判定。"""
        started = StateChange(state=JobState.RENDERING, at=datetime.now(UTC))
        render = asyncio.ensure_future(self._timed("render", job, self._renderer.render(job)))
        try:
            done, _ = await asyncio.wait({render}, timeout=self._rendering_note_after_s)
        except BaseException:
            render.cancel()
            await asyncio.gather(render, return_exceptions=True)
            raise
        if done:
            return render.result(), started
        return await _alongside(on_stage(JobState.RENDERING, started), render), None

    async def _generate_checked(self, job: ReportJob, prompt: RenderedPrompt) -> Completion:
        """生成并按输出格式检查：不符合的重新生成 output_retries 次；截断不重试（同样的 max_tokens
        多半还会截断）。每次尝试的 token 都计入用量。"""
        for attempt in range(self._output_retries + 1):
            completion = await self._llm.generate(prompt, trace_id=job.trace_id)
            self._count_tokens(job, completion)
            if not completion.content.strip():
                raise LLMError("模型返回了空内容")
            try:
                return checked(completion, prompt.output)
            except (InvalidOutput, OutputTruncated) as exc:
                reason = exc.reason if isinstance(exc, InvalidOutput) else "truncated"
                self._metrics.invalid_outputs.inc(
                    1, {"report_type": job.report_type, "reason": reason}
                )
                if isinstance(exc, OutputTruncated) or attempt == self._output_retries:
                    raise
                logger.warning("报告不符合格式（第 {} 次），重新生成：{}", attempt + 1, exc.message)
        raise AssertionError("unreachable")  # pragma: no cover - 循环里必然返回或抛出

    def _count_tokens(self, job: ReportJob, completion: Completion) -> None:
        logger.info(
            "生成完成：finish_reason={} prompt_tokens={} completion_tokens={}",
            completion.finish_reason,
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens,
        )
        tokens = self._metrics.tokens
        tokens.inc(
            completion.usage.prompt_tokens, {"report_type": job.report_type, "kind": "prompt"}
        )
        tokens.inc(
            completion.usage.completion_tokens,
            {"report_type": job.report_type, "kind": "completion"},
        )

    async def deliver(self, job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        """投递终态回调（含内联重试）；不抛异常，未送达由账本安排重投。"""
        try:
            outcome = await self._timed("deliver", job, self._delivery.send(job, payload))
        except Exception as exc:  # noqa: BLE001 - 投递阶段不可用也只是“本轮未送达”
            logger.exception("回调部署不可用，本轮未送达")
            outcome = DeliveryOutcome(delivered=False, attempts=0, error=repr(exc))
        if not outcome.delivered:
            logger.warning(
                "回调本轮未送达：status={} attempts={} last_status={} error={}",
                payload.status,
                outcome.attempts,
                outcome.status_code,
                outcome.error,
            )
        return outcome
