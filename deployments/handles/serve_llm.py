"""集群内实现：经 DeploymentHandle 调用 Ray Serve LLM 的 LLMServer（vLLM）。"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.handles.ray_errors import TRANSIENT_HANDLE_ERRORS
from deployments.handles.request_context import use_trace_id
from serve_app.core.errors import LLMError
from serve_app.core.settings import LLMCallPolicy
from serve_app.llm.port import (
    TransientLLMError,
    call_with_policy,
    completion_from_chat,
    probe_ready,
)
from serve_app.models.reports import Completion
from serve_app.models.templates import RenderedPrompt


def _engine_class(public: type) -> type:
    """Ray Serve LLM 公开协议类对应的引擎类（其直接基类）。"""
    base = public.__base__
    return base if base is not None and base is not object else public


class ServeLLMClient:
    """调用 LLMServer.chat；chat 是异步生成器，非流式请求只产出一个结果。"""

    def __init__(self, handle: DeploymentHandle[Any], model_id: str, policy: LLMCallPolicy) -> None:
        # vLLM 的协议模型较重，只在集群内模式导入
        from ray.serve.llm.openai_api_models import (
            ChatCompletionRequest,
            ChatCompletionResponse,
            ErrorResponse,
        )

        self._request_cls = ChatCompletionRequest
        # 公开类只是引擎（vLLM）协议类的空子类；LLMServer 产出的是引擎类的实例，按基类判断
        self._response_cls = _engine_class(ChatCompletionResponse)
        self._error_cls = _engine_class(ErrorResponse)
        self._handle = handle
        self._stream_handle = handle.options(stream=True)
        self._model_id = model_id
        self._policy = policy

    async def generate(self, prompt: RenderedPrompt, *, trace_id: str) -> Completion:
        """生成一份报告。"""
        use_trace_id(trace_id)
        return await call_with_policy(self._policy, lambda: self._attempt(prompt, trace_id))

    async def _attempt(self, prompt: RenderedPrompt, trace_id: str) -> Completion:
        request = self._request_cls(
            model=self._model_id,
            messages=prompt.chat_messages(),
            max_tokens=prompt.max_tokens,
            temperature=prompt.temperature,
            top_p=prompt.top_p,
            stream=False,
            request_id=trace_id,
        )
        logger.info("提交 LLMServer 生成：max_tokens={}", prompt.max_tokens)
        stream = self._stream_handle.chat.remote(request)
        assert isinstance(stream, DeploymentResponseGenerator)
        try:
            async for item in stream:
                return self._to_completion(item)
        except TRANSIENT_HANDLE_ERRORS as exc:
            raise TransientLLMError(f"LLM 副本暂不可用：{type(exc).__name__}") from exc
        except asyncio.CancelledError:
            # 超时或作业取消：让 Serve 把取消传到副本，vLLM 随之中止生成
            stream.cancel()  # type: ignore[no-untyped-call]
            raise
        raise LLMError("LLMServer 没有返回任何结果")

    def _to_completion(self, item: Any) -> Completion:
        if isinstance(item, self._error_cls):
            failure: Any = item  # 引擎协议类在运行时才确定，字段按鸭子类型读取
            error = failure.error
            message = f"引擎错误 {error.code}: {error.message}"
            if int(error.code or 500) >= 500:
                raise TransientLLMError(message)
            raise LLMError(message)
        if not isinstance(item, self._response_cls):
            raise LLMError(f"LLMServer 返回了意外的类型 {type(item).__name__}")
        return completion_from_chat(item)

    async def ready(self) -> bool:
        """LLMServer 的健康检查在时限内通过即就绪。"""
        return await probe_ready(
            self._handle.check_health.remote, self._policy.ready_timeout_s, "LLMServer"
        )

    async def aclose(self) -> None:
        """句柄由 Serve 管理，无需释放。"""
