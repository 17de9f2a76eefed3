"""外部实现：经 aiohttp 直接调用 OpenAI 兼容服务（如独立的 vLLM）的 /chat/completions。

不经 OpenAI SDK：入口副本在并发 64 的零成本引擎上采样，SDK 的通用机制（请求选项、头的合并、
按类型注解构造响应对象）占了事件循环四成的 CPU，而我们只用它发一个 POST、读三个字段——重试、
超时、错误分类本来就由 call_with_policy 与这里负责（vLLM 自己的压测客户端 `vllm bench serve` 也是
aiohttp 直发）。请求体由 chat_body 一处构造，响应按 ChatReply 校验（只取用到的字段，多的忽略）。
每个请求的 CPU 见 `make bench-llm-client`。
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from loguru import logger
from pydantic import BaseModel, ValidationError

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

# 错误响应里的消息最多取这么多字符（进回调的 error.message）
_ERROR_MESSAGE_CHARS = 300


class _Message(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    message: _Message
    finish_reason: str | None = None


class _Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int | None = 0


class ChatReply(BaseModel):
    """chat 响应里用到的字段（OpenAI 的 ChatCompletion 的子集；其余字段忽略）。"""

    model: str = ""
    choices: list[_Choice]
    usage: _Usage | None = None


class _ModelEntry(BaseModel):
    id: str


class _ModelList(BaseModel):
    data: list[_ModelEntry]


def _error_message(raw: bytes) -> str:
    """错误响应的消息：OpenAI 的 {"error": {"message"}} 或 vLLM 旧版的 {"message"}，
    都不是时取原文开头（状态码由调用方写进消息）。"""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    message: object = None
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message")
    text = str(message) if message else raw.decode(errors="replace").strip()
    return text[:_ERROR_MESSAGE_CHARS] or "（响应体为空）"


def _parsed[T: BaseModel](model: type[T], raw: bytes, what: str) -> T:
    """按 model 校验服务端的答复；答非所问是 LLMError（不是瞬时错误，不重试）。"""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise LLMError(f"外部 LLM 服务的{what}答复无法解析：{exc.errors()[0]['msg']}") from exc


def chat_body(
    model: str, prompt: RenderedPrompt, trace_id: str, engine_priority: bool
) -> dict[str, Any]:
    """一次生成的请求体：OpenAI 的 chat 字段加 vLLM 认的附加字段——请求 id（日志与中止）、json 报告的
    response_format（按 schema 约束解码）、开了 engine_priority 时的调度优先级。"""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ],
        "max_tokens": prompt.max_tokens,
        "temperature": prompt.temperature,
        "top_p": prompt.top_p,
        "request_id": trace_id,
    }
    response_format = prompt.output.response_format()
    if response_format is not None:
        body["response_format"] = response_format
    if engine_priority and prompt.engine_priority != 0:
        body["priority"] = prompt.engine_priority
    return body


class OpenAICompatClient:
    """每个副本一个 aiohttp 会话（在第一次使用时、在副本的事件循环里创建）；trace_id 放进
    X-Request-Id 头与请求体。"""

    def __init__(self, base_url: str, api_key: str, model: str, policy: LLMCallPolicy) -> None:
        self._policy = policy
        self._model = model
        self._model_lock = asyncio.Lock()
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(
            total=policy.timeout_s, connect=min(10.0, policy.timeout_s)
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # 连接数不另设上限：同时在途的生成已由副本的作业队列（max_concurrent_per_replica）限住
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=0),
                raise_for_status=False,
            )
        return self._session

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, trace_id: str = ""
    ) -> bytes:
        """发一次请求，返回 2xx 的响应体；连接错误与 429 / 5xx 抛 TransientLLMError（可重试），
        其余非 2xx 抛 LLMError，超时抛 TimeoutError（由 call_with_policy 记为生成超时，不重试）。"""
        headers = {"X-Request-Id": trace_id} if trace_id else None
        try:
            async with self._client().request(
                method, f"{self._base_url}{path}", json=body, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError:
            # aiohttp 的连接、读取超时都是 TimeoutError 的子类（也是 ClientError）：先认超时
            raise
        except aiohttp.ClientError as exc:
            # 对外（回调里的错误消息）不带地址与端口，详情写日志
            logger.warning("外部 LLM 服务连接失败或中途断开：{!r}", exc)
            raise TransientLLMError("外部 LLM 服务暂不可用：连接失败或对端中途断开") from exc
        if status == 429 or status >= 500:
            raise TransientLLMError(
                f"外部 LLM 服务暂不可用（HTTP {status}）：{_error_message(raw)}"
            )
        if status >= 300:
            raise LLMError(f"外部 LLM 服务拒绝请求（HTTP {status}）：{_error_message(raw)}")
        return raw

    async def _model_name(self) -> str:
        """未配置模型名时，取服务端 /models 的第一个并缓存。"""
        if self._model:
            return self._model
        async with self._model_lock:
            if not self._model:
                models = await self._list_models()
                if not models.data:
                    raise LLMError("外部 LLM 服务没有可用模型")
                self._model = models.data[0].id
        return self._model

    async def _list_models(self) -> _ModelList:
        return _parsed(_ModelList, await self._request("GET", "/models"), " /models ")

    async def generate(self, prompt: RenderedPrompt, *, trace_id: str) -> Completion:
        """生成一份报告。"""
        return await call_with_policy(self._policy, lambda: self._attempt(prompt, trace_id))

    async def _attempt(self, prompt: RenderedPrompt, trace_id: str) -> Completion:
        model = await self._model_name()
        logger.info("提交外部 LLM 生成：model={} max_tokens={}", model, prompt.max_tokens)
        body = chat_body(model, prompt, trace_id, self._policy.engine_priority)
        raw = await self._request("POST", "/chat/completions", body, trace_id)
        return completion_from_chat(_parsed(ChatReply, raw, " chat "))

    async def state(self) -> EngineState:
        """/models 在时限内能列出即 warm；外部服务的扩缩不归本服务管，没有 cold。"""
        ready = await probe_ready(self._list_models, self._policy.ready_timeout_s, "外部 LLM 服务")
        return EngineState.WARM if ready else EngineState.DOWN

    async def wait_warm(self) -> None:
        """外部服务没有“缩到零”可等：直接生成（它自己的冷启动算在生成超时里）。"""

    async def aclose(self) -> None:
        """关闭连接池。"""
        if self._session is not None:
            await self._session.close()
