"""外部实现：经一个 AsyncOpenAI 客户端调用 OpenAI 兼容服务（如独立的 vLLM）。"""

from __future__ import annotations

import asyncio

import openai
from loguru import logger
from openai import AsyncOpenAI

from serve_app.core.errors import LLMError
from serve_app.core.settings import LLMCallPolicy
from serve_app.llm.port import (
    EngineState,
    TransientLLMError,
    call_with_policy,
    completion_from_chat,
    probe_ready,
)
from serve_app.models.reports import Completion
from serve_app.models.templates import RenderedPrompt


def _extra_body(trace_id: str, prompt: RenderedPrompt, engine_priority: bool) -> dict[str, object]:
    """vLLM 认的附加字段：请求 id（日志与中止），json 报告的 response_format（按 schema 约束解码），
    开了 engine_priority 时的调度优先级。

    response_format 经 extra_body 发：SDK 的 response_format 参数的类型不收任意 dict。
    """
    body: dict[str, object] = {"request_id": trace_id}
    response_format = prompt.output.response_format()
    if response_format is not None:
        body["response_format"] = response_format
    if engine_priority and prompt.engine_priority != 0:
        body["priority"] = prompt.engine_priority
    return body


class OpenAICompatClient:
    """每个副本一个 AsyncOpenAI；trace_id 放进 X-Request-Id 头与请求体。"""

    def __init__(self, base_url: str, api_key: str, model: str, policy: LLMCallPolicy) -> None:
        self._policy = policy
        self._model = model
        self._model_lock = asyncio.Lock()
        # 重试由 call_with_policy 统一负责，SDK 自带重试关掉
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=openai.Timeout(policy.timeout_s, connect=min(10.0, policy.timeout_s)),
        )

    async def _model_name(self) -> str:
        """未配置模型名时，取服务端 /models 的第一个并缓存。"""
        if self._model:
            return self._model
        async with self._model_lock:
            if not self._model:
                models = await self._client.models.list()
                if not models.data:
                    raise LLMError("外部 LLM 服务没有可用模型")
                self._model = models.data[0].id
        return self._model

    async def generate(self, prompt: RenderedPrompt, *, trace_id: str) -> Completion:
        """生成一份报告。"""
        return await call_with_policy(self._policy, lambda: self._attempt(prompt, trace_id))

    async def _attempt(self, prompt: RenderedPrompt, trace_id: str) -> Completion:
        try:
            model = await self._model_name()
            logger.info("提交外部 LLM 生成：model={} max_tokens={}", model, prompt.max_tokens)
            response = await self._client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": prompt.system},
                    {"role": "user", "content": prompt.user},
                ],
                max_tokens=prompt.max_tokens,
                temperature=prompt.temperature,
                top_p=prompt.top_p,
                extra_headers={"X-Request-Id": trace_id},
                extra_body=_extra_body(trace_id, prompt, self._policy.engine_priority),
            )
        except openai.APITimeoutError as exc:
            raise TimeoutError from exc
        except (
            openai.APIConnectionError,
            openai.RateLimitError,
            openai.InternalServerError,
        ) as exc:
            raise TransientLLMError(f"外部 LLM 服务暂不可用：{exc}") from exc
        except openai.APIStatusError as exc:
            raise LLMError(
                f"外部 LLM 服务拒绝请求（HTTP {exc.status_code}）：{exc.message}"
            ) from exc
        return completion_from_chat(response)

    async def state(self) -> EngineState:
        """/models 在时限内能列出即 warm；外部服务的扩缩不归本服务管，没有 cold。"""
        ready = await probe_ready(
            self._client.models.list, self._policy.ready_timeout_s, "外部 LLM 服务"
        )
        return EngineState.WARM if ready else EngineState.DOWN

    async def wait_warm(self) -> None:
        """外部服务没有“缩到零”可等：直接生成（它自己的冷启动算在生成超时里）。"""

    async def aclose(self) -> None:
        """关闭连接池。"""
        await self._client.close()
