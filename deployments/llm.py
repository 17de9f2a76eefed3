"""集群内 LLM：按 EngineSettings 构造 Ray Serve LLM 的 LLMServer 部署。"""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from serve_app.core.settings import EngineSettings

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


def llm_deployment_name(engine: EngineSettings) -> str:
    """LLMServer 部署名（serve_config.yaml 用它覆盖选项）。"""
    return f"LLMServer:{engine.model_id}"


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
    )


def build_llm_server(engine: EngineSettings) -> Application:
    """构造（未部署的）LLMServer 应用节点，供入口绑定其句柄。"""
    return build_llm_deployment(build_llm_config(engine))
