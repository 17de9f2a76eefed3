"""集群内 LLM：按 EngineSettings 构造 Ray Serve LLM 的 LLMServer 部署。"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment
from ray.serve.llm.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
)

from deployments.handles.serve_llm import EngineFailure, EngineReply, EngineRequest
from deployments.ray_private_llm import CallbackBase, ModelLoadingConfig
from serve_app.core.settings import EngineSettings
from serve_app.llm.port import completion_from_chat

# LLM 副本里由 Ray Serve LLM 配置的标准库日志（与 vLLM、LLMServer 的日志在同一个副本日志里）
logger = logging.getLogger(__name__)

# 排队深度自动扩缩的默认值；serve_config.yaml 里 `LLMServer:<model_id>` 可覆盖。
# 不设置时 Ray Serve LLM 用 1e9，扩缩永远不会触发。
DEFAULT_LLM_DEPLOYMENT_CONFIG: dict[str, Any] = {
    "max_ongoing_requests": 64,
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 1,
        "target_ongoing_requests": 16,
    },
}


# 部署名前缀保持 Ray Serve LLM 的默认：serve_config*.yaml 与仪表盘按 `LLMServer:<model_id>` 找它
DEPLOYMENT_NAME_PREFIX = "LLMServer:"


def _engine_class(public: type) -> type:
    """Ray Serve LLM 公开协议类对应的引擎类（其直接基类）。"""
    base = public.__base__
    return base if base is not None and base is not object else public


# 公开类只是引擎协议类的空子类；LLMServer 产出的是引擎类的实例，按基类判断
_RESPONSE_CLASS = _engine_class(ChatCompletionResponse)
_ERROR_CLASS = _engine_class(ErrorResponse)

ChatMethod = Callable[[ChatCompletionRequest], Awaitable[AsyncIterator[Any]]]


def engine_reply(item: object) -> EngineReply:
    """LLMServer.chat 产出的一项（vLLM 协议对象）→ 入口能直接读的 Completion / EngineFailure。"""
    if isinstance(item, _ERROR_CLASS):
        failure: Any = item  # 引擎协议类在运行时才确定，字段按鸭子类型读取
        error = failure.error
        return EngineFailure(code=int(error.code or 500), message=str(error.message))
    if isinstance(item, _RESPONSE_CLASS):
        return completion_from_chat(item)
    return EngineFailure(code=500, message=f"LLMServer 产出了意外的类型 {type(item).__name__}")


async def generate_via_chat(chat: ChatMethod, request: EngineRequest) -> EngineReply:
    """在 LLM 副本里构造 vLLM 的请求、调 chat（非流式只产出一项）并转换结果。"""
    chat_request = ChatCompletionRequest(**request.model_dump(), stream=False)
    async for item in await chat(chat_request):
        return engine_reply(item)
    return EngineFailure(code=500, message="LLMServer 没有返回任何结果")


class LocalModelCallback(CallbackBase):
    """模型来源是本节点上的目录时，跳过 Ray Serve LLM 的“各节点下载模型”任务。

    那个任务在引擎 placement group 的每个节点上另起一个 Ray worker 进程（导入 torch/transformers，
    2 核上约 50 秒）；来源不是 s3:// / gs:// 时它什么也不下载，只原样返回路径。
    来源是模型名或云存储路径时照常运行。
    """

    async def on_before_node_init(self) -> None:
        loading = self.llm_config.model_loading_config
        source = loading.model_source if isinstance(loading, ModelLoadingConfig) else None
        if isinstance(source, str) and await asyncio.to_thread(Path(source).is_dir):
            self.ctx.run_init_node = False
            logger.info("模型来源是本机目录 %s：跳过各节点的下载任务", source)


class ReportLLMServer(LLMServer):
    """Ray Serve LLM 的 LLMServer，加一个收发本项目轻量模型的 `generate_report`。"""

    async def generate_report(self, request: EngineRequest) -> EngineReply:
        """生成一份报告正文；调用方取消时 vLLM 随之中止这个请求。"""
        return await generate_via_chat(self.chat, request)


def build_llm_config(engine: EngineSettings) -> LLMConfig:
    """EngineSettings → LLMConfig。"""
    deployment_config: dict[str, Any] = {
        **DEFAULT_LLM_DEPLOYMENT_CONFIG,
        # 副本资源会并进引擎 placement group 的第一个 bundle：自定义资源决定整组落在哪类节点
        "ray_actor_options": {
            "num_cpus": engine.replica_num_cpus,
            "resources": dict(engine.replica_resources),
        },
    }
    return LLMConfig(
        model_loading_config={
            "model_id": engine.model_id,
            "model_source": engine.model_source,
        },
        accelerator_config={"kind": engine.accelerator},
        engine_kwargs=dict(engine.engine_kwargs),
        runtime_env={"env_vars": dict(engine.env_vars)} if engine.env_vars else None,
        placement_group_config=(
            dict(engine.placement_group_config) if engine.placement_group_config else None
        ),
        deployment_config=deployment_config,
        # 流水线发的是非流式请求；流式批处理的 50ms 定时器对它无益
        experimental_configs={"stream_batching_interval_ms": 0},
        callback_config={"callback_class": f"{__name__}.{LocalModelCallback.__qualname__}"},
    )


def build_llm_server(engine: EngineSettings) -> Application:
    """构造（未部署的）LLMServer 应用节点，供入口绑定其句柄。"""
    return build_llm_deployment(
        build_llm_config(engine),
        name_prefix=DEPLOYMENT_NAME_PREFIX,
        deployment_cls=ReportLLMServer,
    )
