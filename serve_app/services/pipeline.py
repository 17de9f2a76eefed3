"""报告流水线：渲染 → 生成 → 回调。作业的持久化与调度见 services/runner.py。"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
# 第二个参数是途经而还没有写下的阶段（见 ReportPipeline._noted），按序与这一次一起记；
# 最后一条与第一个参数是同一阶段时，它就是这一阶段自己的那一条（带着真实的开始时刻）
StageHook = Callable[[JobState, tuple[StateChange, ...]], Awaitable[None]]

# 渲染、生成在这么久之内完成的（渲染几乎总是：毫秒级；生成在快引擎、短报告时）不单为它们
# 写一次账本：随下一次写入（记录结果）一起记
STAGE_NOTE_AFTER_S = 0.5


class StageInterrupted(Exception):
    """作业在阶段之间被打断：已请求取消（cancelled）或租约已归别的副本（lost）。"""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _no_hook(_: JobState, __: tuple[StateChange, ...]) -> None:
    return None


@dataclass
class StageNotes:
    """一个作业的阶段记录（执行器每次执行建一个）：慢的阶段由 write 立即写进账本；很快做完的
    留在 passed 里，执行器记录结果（成功、失败、取消或到期）时一起记进历史。"""

    write: StageHook = _no_hook
    passed: list[StateChange] = field(default_factory=list)


class ReportPipeline:
    """一个作业的两步：产生结果（成功或失败的回调载荷），投递回调。"""

    def __init__(
        self,
        renderer: RenderStage,
        llm: LLMClient,
        delivery: DeliveryStage,
        metrics: ReportMetrics | None = None,
        output_retries: int = 1,
        stage_note_after_s: float = STAGE_NOTE_AFTER_S,
    ) -> None:
        self._renderer = renderer
        self._stage_note_after_s = stage_note_after_s
        self._llm = llm
        self._delivery = delivery
        self._metrics = metrics or ReportMetrics()
        self._output_retries = output_retries

    async def produce(self, job: ReportJob, notes: StageNotes | None = None) -> CallbackPayload:
        """渲染并生成；任何失败都变成 failed 载荷（被打断时抛 StageInterrupted）。"""
        logger.info("作业开始：report_type={} length={}", job.report_type, job.length)
        notes = notes or StageNotes()
        try:
            # LLM 缩到零时在这里等它冷启动：等待算进 queue_wait，不占生成的超时
            await self._llm.wait_warm()
            self._metrics.stage_seconds.observe(
                max((datetime.now(UTC) - job.created_at).total_seconds(), 0.0),
                {"stage": "queue_wait", "priority": job.priority},
            )
            rendered = await self._noted(
                JobState.RENDERING,
                timed_stage(self._metrics, "render", job, self._renderer.render(job)),
                notes,
            )
            prompt = rendered.model_copy(update={"engine_priority": ENGINE_PRIORITY[job.priority]})
            completion = await self._noted(
                JobState.GENERATING,
                timed_stage(self._metrics, "generate", job, self._generate_checked(job, prompt)),
                notes,
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

    async def _noted[T](self, state: JobState, work: Awaitable[T], notes: StageNotes) -> T:
        """做一步（渲染或生成），按它花的时间决定何时把进入这一步写进账本。

        stage_note_after_s 内做完的（渲染几乎总是，生成在快引擎、短报告时）不单为它写账本：它的
        开始时刻留在 notes.passed 里，随下一次写入（进入生成或记录结果）一起记，低负载时每个作业少
        一跳，结果也不必排在一次与生成并行的账本往返后面。做得慢的，写下它（连同之前途经的阶段，
        时刻都是各自开始的那一刻），与工作并行：状态查询看得到作业卡在哪一步，已登记的取消与丢了的
        租约在这里被发现，工作随之取消（vLLM 中止请求）后抛 StageInterrupted；快的那些由续租回复与
        记录结果时发现。写成之后才从 passed 里去掉（写到一半被取消的，结果那次再记，历史去重）。"""
        notes.passed.append(StateChange(state=state, at=datetime.now(UTC)))
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=self._stage_note_after_s)
            if not done:
                await notes.write(state, tuple(notes.passed))
                notes.passed.clear()
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        return await task

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
        return await deliver_round(self._delivery, self._metrics, job, payload)


async def timed_stage[T](
    metrics: ReportMetrics, stage: str, job: ReportJob, work: Awaitable[T]
) -> T:
    """执行一步并把耗时记进 reports_stage_seconds（按阶段与优先级；失败的也记）。"""
    started = time.perf_counter()
    try:
        return await work
    finally:
        metrics.stage_seconds.observe(
            time.perf_counter() - started, {"stage": stage, "priority": job.priority}
        )


async def deliver_round(
    delivery: DeliveryStage, metrics: ReportMetrics, job: ReportJob, payload: CallbackPayload
) -> DeliveryOutcome:
    """投递一轮终态回调（含内联重试）；不抛异常，未送达由账本安排重投。

    入口副本（ReportPipeline.deliver）与 Ledger 副本（SQLite 账本时由它收尾）共用。"""
    try:
        outcome = await timed_stage(metrics, "deliver", job, delivery.send(job, payload))
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
