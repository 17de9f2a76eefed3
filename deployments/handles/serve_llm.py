"""集群内实现：经 DeploymentHandle 调用 Ray Serve LLM 的 LLMServer（vLLM）。"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger
from pydantic import BaseModel, JsonValue
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.handles.ray_errors import TRANSIENT_HANDLE_ERRORS
from deployments.handles.request_context import use_trace_id
from serve_app.core.errors import LLMError
from serve_app.core.settings import LLMCallPolicy
from serve_app.llm.port import TransientLLMError, call_with_policy, probe_ready
from serve_app.models.reports import Completion
from serve_app.models.templates import RenderedPrompt


class EngineRequest(BaseModel):
    """入口发给 LLM 副本的生成请求（普通 pydantic 模型：入口不必导入 vLLM 的协议类）。"""

    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    request_id: str
    # json 报告：OpenAI 的 response_format（json_schema），vLLM 按它约束解码
    response_format: dict[str, JsonValue] | None = None
    # vLLM 的调度优先级（数小的先）：集群内的引擎都以 scheduling_policy: priority 启动
    priority: int = 0


class EngineFailure(BaseModel):
    """引擎答的错误（OpenAI 错误体的 code 与 message）。"""

    code: int
    message: str


# LLM 副本 `generate_report` 的返回：成功是 Completion，引擎报错是 EngineFailure
EngineReply = Completion | EngineFailure


class ServeLLMClient:
    """调用 LLM 副本的 `generate_report`（deployments/llm.py 的 ReportLLMServer）。

    请求与结果都是本项目的轻量模型：vLLM 协议类的构造与转换在 LLM 副本里做，
    入口副本不导入 vLLM（否则每个入口副本启动要多花约 35 秒 CPU）。
    """

    def __init__(self, handle: DeploymentHandle[Any], model_id: str, policy: LLMCallPolicy) -> None:
        self._handle = handle
        self._model_id = model_id
        self._policy = policy

    async def generate(self, prompt: RenderedPrompt, *, trace_id: str) -> Completion:
        """生成一份报告。"""
        use_trace_id(trace_id)
        return await call_with_policy(self._policy, lambda: self._attempt(prompt, trace_id))

    async def _attempt(self, prompt: RenderedPrompt, trace_id: str) -> Completion:
        request = EngineRequest(
            model=self._model_id,
            messages=prompt.chat_messages(),
            max_tokens=prompt.max_tokens,
            temperature=prompt.temperature,
            top_p=prompt.top_p,
            request_id=trace_id,
            response_format=prompt.output.response_format(),
            priority=prompt.engine_priority,
        )
        logger.info("提交 LLMServer 生成：max_tokens={}", prompt.max_tokens)
        response = self._handle.generate_report.remote(request)
        assert isinstance(response, DeploymentResponse)
        try:
            reply: object = await response
        except TRANSIENT_HANDLE_ERRORS as exc:
            raise TransientLLMError(f"LLM 副本暂不可用：{type(exc).__name__}") from exc
        except asyncio.CancelledError:
            # 超时或作业取消：让 Serve 把取消传到副本，vLLM 随之中止生成
            response.cancel()  # type: ignore[no-untyped-call]
            raise
        return completion_from_reply(reply)

    async def ready(self) -> bool:
        """LLMServer 的健康检查在时限内通过即就绪。"""
        return await probe_ready(
            self._handle.check_health.remote, self._policy.ready_timeout_s, "LLMServer"
        )

    async def aclose(self) -> None:
        """句柄由 Serve 管理，无需释放。"""


def completion_from_reply(reply: object) -> Completion:
    """LLM 副本的返回 → Completion；引擎错误按 code 分可重试（≥ 500）与不可重试。"""
    if isinstance(reply, EngineFailure):
        message = f"引擎错误 {reply.code}: {reply.message}"
        if reply.code >= 500:
            raise TransientLLMError(message)
        raise LLMError(message)
    if not isinstance(reply, Completion):
        raise LLMError(f"LLMServer 返回了意外的类型 {type(reply).__name__}")
    return reply
