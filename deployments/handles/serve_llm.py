"""集群内实现：经 DeploymentHandle 调用 Ray Serve LLM 的 LLMServer（vLLM）。"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger
from pydantic import BaseModel, JsonValue
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from deployments.handles.ray_errors import REPLICA_LOST_ERRORS, TRANSIENT_HANDLE_ERRORS
from deployments.handles.replicas import read_replicas
from deployments.handles.request_context import use_trace_id
from serve_app.core.errors import LLMError
from serve_app.core.metrics import ReportMetrics
from serve_app.core.settings import LLMCallPolicy
from serve_app.llm.cold_start import ColdStartGate, ReplicaSnapshot
from serve_app.llm.port import EngineState, TransientLLMError, call_with_policy
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

    def __init__(
        self,
        handle: DeploymentHandle[Any],
        model_id: str,
        policy: LLMCallPolicy,
        metrics: ReportMetrics | None = None,
    ) -> None:
        self._handle = handle
        self._model_id = model_id
        self._policy = policy

        async def replicas() -> ReplicaSnapshot:
            return await asyncio.to_thread(read_replicas, handle.app_name, handle.deployment_name)

        self._gate = ColdStartGate(
            policy,
            metrics or ReportMetrics(),
            read_replicas=replicas,
            first_answer=self._health_check,
        )

    async def generate(self, prompt: RenderedPrompt, *, trace_id: str) -> Completion:
        """生成一份报告。"""
        use_trace_id(trace_id)
        # 副本在生成中崩溃（或请求在路由器里等被补的副本）：等新副本加载好再重发，不算超时
        return await call_with_policy(
            self._policy, lambda: self._attempt(prompt, trace_id), recover=self._gate.wait_replaced
        )

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
            if isinstance(exc, REPLICA_LOST_ERRORS):
                self._gate.note_replica_lost()
            raise TransientLLMError(f"LLM 副本暂不可用：{type(exc).__name__}") from exc
        except asyncio.CancelledError:
            # 超时或作业取消：让 Serve 把取消传到副本，vLLM 随之中止生成
            response.cancel()  # type: ignore[no-untyped-call]
            raise
        return completion_from_reply(reply)

    # ---- 副本数与冷启动（serve_app/llm/cold_start.py） ----

    def start(self) -> None:
        """在事件循环里启动副本数的定时刷新（入口副本构造时调用）。"""
        self._gate.start()

    async def state(self) -> EngineState:
        """warm / cold（缩到零、能扩起来）/ down。"""
        return await self._gate.state()

    async def wait_warm(self) -> None:
        """LLM 缩在零时等它冷启动（llm.cold_start_timeout_s），不占生成的超时。"""
        await self._gate.wait_warm()

    async def _health_check(self) -> None:
        """LLMServer 的健康检查；零副本时请求在路由器里排队，Serve 据此把副本从零扩起来。

        瞬时错误（副本刚死、部署暂不可用）退避重试，总时长由调用方的时限管。
        """
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT_HANDLE_ERRORS),
            wait=wait_exponential(multiplier=self._policy.initial_backoff_s, max=10),
            reraise=True,
        ):
            with attempt:
                response = self._handle.check_health.remote()
                assert isinstance(response, DeploymentResponse)
                try:
                    await response
                except asyncio.CancelledError:
                    response.cancel()  # type: ignore[no-untyped-call]
                    raise

    async def aclose(self) -> None:
        """停掉副本数刷新与冷启动等待；句柄由 Serve 管理。"""
        await self._gate.aclose()


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
