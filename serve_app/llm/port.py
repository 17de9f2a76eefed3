"""LLM 阶段的接口与共用的超时/重试逻辑。"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Protocol

from loguru import logger
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from serve_app.core.errors import LLMError, LLMTimeout
from serve_app.core.settings import LLMCallPolicy
from serve_app.models.reports import Completion, Usage
from serve_app.models.templates import RenderedPrompt


class TransientLLMError(LLMError):
    """可重试的瞬时错误：连接失败、副本不可用、背压、5xx。"""


class EngineState(StrEnum):
    """引擎此刻的状态（/readyz 的 `llm` 字段）。"""

    WARM = "warm"  # 有副本在跑、健康检查通过
    COLD = "cold"  # 缩到了零个副本（或正从零扩起），来了作业会自动拉起：照样接活
    DOWN = "down"  # 不能接活：部署不健康、还在首次部署、健康检查不过


class LLMClient(Protocol):
    """生成一份报告正文。实现：集群内 LLMServer、外部 OpenAI 兼容服务、测试用假引擎。"""

    async def generate(self, prompt: RenderedPrompt, *, trace_id: str) -> Completion:
        """生成；失败抛 LLMError / LLMTimeout。"""
        ...

    async def state(self) -> EngineState:
        """引擎此刻的状态（供 /readyz：warm、cold 都算就绪）。"""
        ...

    async def wait_warm(self) -> None:
        """等引擎有副本可用（缩到零时等它冷启动，受 llm.cold_start_timeout_s 限制）。

        生成的超时（llm.timeout_s）从这之后才开始算：冷启动不占生成的时限。
        """
        ...

    async def aclose(self) -> None:
        """释放连接等资源。"""
        ...


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "LLM 调用第 {} 次失败，{:.2f}s 后重试：{!r}",
        state.attempt_number,
        state.next_action.sleep if state.next_action else 0.0,
        exc,
    )


async def call_with_policy(
    policy: LLMCallPolicy,
    attempt: Callable[[], Awaitable[Completion]],
    recover: Callable[[], Awaitable[bool]] | None = None,
) -> Completion:
    """按策略执行一次生成：每次尝试有超时，瞬时错误指数退避重试；超时不重试。

    recover：一次尝试失败或超时之后问一句“是不是 LLM 副本没了、现在等回来了”（集群内引擎：副本崩溃
    后 Serve 补一个新的，真实引擎要重新加载一分钟量级）。答是就立即重发：等副本的时间不算进
    timeout_s，这次也不算一次尝试（最多 max_attempts 次）；答否按原来的规则处理。
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait_exponential(multiplier=policy.initial_backoff_s, max=policy.max_backoff_s)
        + wait_random(0, policy.initial_backoff_s),
        retry=retry_if_exception_type(TransientLLMError),
        before_sleep=_log_retry,
        reraise=True,
    )

    async def once() -> Completion:
        try:
            async with asyncio.timeout(policy.timeout_s):
                return await attempt()
        except TimeoutError as exc:
            raise LLMTimeout(f"生成超过 {policy.timeout_s:g} 秒未完成") from exc

    async def timed_attempt() -> Completion:
        recoveries = 0
        while True:
            try:
                return await once()
            except (LLMTimeout, TransientLLMError) as exc:
                if recover is None or recoveries >= policy.max_attempts or not await recover():
                    raise
                recoveries += 1
                logger.warning("LLM 副本换过了（之前：{!r}）：在新副本上重发", exc)

    result: Completion = await retrying(timed_attempt)
    return result


def completion_from_chat(response: Any) -> Completion:
    """OpenAI 形状的 chat 响应（外部客户端的 ChatReply 或 vLLM 协议对象）→ Completion。"""
    if not response.choices:
        raise LLMError("引擎返回了空的 choices")
    choice = response.choices[0]
    usage = response.usage
    return Completion(
        content=choice.message.content or "",
        model=response.model,
        finish_reason=choice.finish_reason,
        usage=Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
        ),
    )


async def probe_ready(check: Callable[[], Awaitable[object]], timeout_s: float, what: str) -> bool:
    """在时限内 check() 成功即就绪；任何失败都只意味着“未就绪”（记一条告警）。"""
    try:
        async with asyncio.timeout(timeout_s):
            await check()
    except Exception as exc:  # noqa: BLE001 - 任何失败都只意味着“未就绪”
        logger.warning("{} 未就绪：{!r}", what, exc)
        return False
    return True
