"""快速测试用的假实现：不启动 Ray，可注入故障。真实引擎由 e2e 层证明。"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial

from serve_app.core.errors import LLMError
from serve_app.core.metrics import ReportMetrics
from serve_app.ledger.records import StateChange
from serve_app.ledger.store import JobStore
from serve_app.llm.port import EngineState
from serve_app.models.reports import (
    CallbackPayload,
    Completion,
    DeliveryOutcome,
    ReportJob,
    Usage,
)
from serve_app.models.templates import RenderedPrompt
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.renderer import PromptRenderer
from serve_app.services.pipeline import deliver_round
from serve_app.services.settlement import Settled, Settlement
from serve_app.services.stages import DeliveryStage


@dataclass
class FakeLLM:
    """按脚本返回结果或抛错的 LLM 阶段。"""

    is_ready: bool = True
    # >0：引擎缩在零，第一个作业要等这么久（之后是热的）
    cold_start_s: float = 0.0
    warm_waits: int = 0
    error: BaseException | None = None
    delay_s: float = 0.0
    # 设了就等它 set 之后才返回（测试先把作业排好，再放行，不和生成速度赛跑）
    gate: asyncio.Event | None = None
    content: str = "报告正文"
    # 依次返回的 (正文, finish_reason)；用完后返回 content
    replies: list[tuple[str, str | None]] = field(default_factory=list)
    prompts: list[tuple[str, RenderedPrompt]] = field(default_factory=list)
    closed: bool = False

    async def generate(self, prompt: RenderedPrompt, *, trace_id: str) -> Completion:
        """记录调用，按脚本返回。"""
        self.prompts.append((trace_id, prompt))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        content, finish_reason = self.replies.pop(0) if self.replies else (self.content, "stop")
        return Completion(
            content=content,
            model="fake",
            finish_reason=finish_reason,
            usage=Usage(prompt_tokens=3, completion_tokens=2),
        )

    async def state(self) -> EngineState:
        """状态由脚本决定（is_ready=False 即 down）。"""
        if not self.is_ready:
            return EngineState.DOWN
        return EngineState.COLD if self.cold_start_s else EngineState.WARM

    async def wait_warm(self) -> None:
        """冷启动：第一次等 cold_start_s（之后算热的），计入 warm_waits。"""
        self.warm_waits += 1
        if self.cold_start_s:
            await asyncio.sleep(self.cold_start_s)
            self.cold_start_s = 0.0

    async def aclose(self) -> None:
        """记录已关闭。"""
        self.closed = True


class LocalRenderStage:
    """进程内渲染（不经 Ray 句柄）。"""

    def __init__(
        self, catalog: TemplateCatalog, error: BaseException | None = None, delay_s: float = 0.0
    ) -> None:
        self._renderer = PromptRenderer(catalog)
        self.error = error
        self.delay_s = delay_s

    async def render(self, job: ReportJob) -> RenderedPrompt:
        """渲染或按脚本抛错（delay_s：像渲染副本忙着时那样慢）。"""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self._renderer.render(job.report_type, job.inputs, job.length, job.output_schema)


@dataclass
class RecordingDelivery:
    """记录载荷的投递阶段。"""

    outcome: DeliveryOutcome = field(
        default_factory=lambda: DeliveryOutcome(delivered=True, attempts=1, status_code=200)
    )
    error: BaseException | None = None
    delay_s: float = 0.0
    sent: list[tuple[str, CallbackPayload]] = field(default_factory=list)

    async def send(self, job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        """记录并返回脚本给定的结果（delay_s：接收方慢）。"""
        self.sent.append((job.callback_url, payload))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.outcome


class LedgerSideSettler:
    """像 Ledger 副本那样收尾：直接对账本（不经入口的计时包装）记结果、投递、记投递。

    可编排一次失败：fail_before 什么都没做就失败（旧副本不认端点、副本不可用）；
    fail_after_finish 记下结果之后、投递之前失败（Ledger 副本死在这一步）。"""

    def __init__(self, store: JobStore, delivery: DeliveryStage) -> None:
        self.store = store
        self.settlement = Settlement(store, partial(deliver_round, delivery, ReportMetrics()))
        self.calls = 0
        self.fail_before: Exception | None = None
        self.fail_after_finish: Exception | None = None
        # False：像负载下的入口那样不交给它（就地收尾）
        self.takes = True

    def worthwhile(self) -> bool:
        """Settler.worthwhile：按 takes。"""
        return self.takes

    async def finish_and_deliver(
        self,
        job: ReportJob,
        owner: str,
        payload: CallbackPayload,
        passed: tuple[StateChange, ...],
    ) -> Settled | None:
        """Settler.finish_and_deliver，按编排失败一次。"""
        self.calls += 1
        if self.fail_before is not None:
            error, self.fail_before = self.fail_before, None
            raise error
        if self.fail_after_finish is not None:
            error, self.fail_after_finish = self.fail_after_finish, None
            await self.store.finish(job.trace_id, owner, payload, passed)
            raise error
        return await self.settlement.finish_and_deliver(job, owner, payload, passed)


def llm_error(message: str = "引擎错误 500: boom") -> LLMError:
    """一个 LLMError 实例。"""
    return LLMError(message)
