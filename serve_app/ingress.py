"""ReportIngress 部署：FastAPI 入口，持有流水线与 LLM 客户端。"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from loguru import logger
from ray import serve
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle

from serve_app.api import create_app
from serve_app.core.logging import configure_logging
from serve_app.core.services import IngressServices
from serve_app.core.settings import LLMMode, Settings
from serve_app.delivery.url_guard import callback_target_policy
from serve_app.llm.openai_compat import OpenAICompatClient
from serve_app.llm.port import LLMClient
from serve_app.llm.serve_llm import ServeLLMClient
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.services.pipeline import ReportPipeline
from serve_app.services.stages import HandleDeliveryStage, HandleRenderStage
from serve_app.services.submission import ReportSubmissions


def make_llm_client(settings: Settings, llm_handle: DeploymentHandle[Any] | None) -> LLMClient:
    """按配置选择 LLM 阶段的实现。"""
    if settings.llm_mode is LLMMode.SERVE_LLM:
        if llm_handle is None:
            raise ValueError("llm_mode=serve_llm 需要 LLMServer 的句柄")
        return ServeLLMClient(llm_handle, settings.engine.model_id, settings.llm)
    return OpenAICompatClient(
        base_url=settings.external_base_url,
        api_key=settings.external.api_key.get_secret_value(),
        model=settings.external.model,
        policy=settings.llm,
    )


class ReportIngress:
    """入口副本：资源在 __init__ 创建，在关闭时释放。"""

    def __init__(
        self,
        settings: Settings,
        renderer: DeploymentHandle[Any],
        callbacks: DeploymentHandle[Any],
        llm: DeploymentHandle[Any] | None = None,
    ) -> None:
        configure_logging(settings.log_level, settings.log_json_path)
        catalog = TemplateCatalog.from_file(settings.resolved_templates_path)
        self._llm = make_llm_client(settings, llm)
        self._services = IngressServices(
            settings=settings,
            catalog=catalog,
            submissions=ReportSubmissions(catalog, settings, callback_target_policy(settings)),
            pipeline=ReportPipeline(
                HandleRenderStage(renderer), self._llm, HandleDeliveryStage(callbacks)
            ),
            llm=self._llm,
        )
        logger.info("入口已启动：llm_mode={}", settings.llm_mode)
        if not settings.api_keys:
            logger.warning("未配置 API key（REPORTS_API_KEYS）：/v1/* 不鉴权，只适合本机或受信网络")

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve 在构造后调用，取得本副本的 HTTP 应用。"""
        return create_app(self._services)

    async def __del__(self) -> None:
        await self._llm.aclose()


# 部署对象与类分开命名：类按引用序列化（见 deployments/callback.py）
report_ingress_deployment: Deployment = serve.deployment(
    name="ReportIngress",
    ray_actor_options={"num_cpus": 0.1},
    # 后台流水线在请求的 ASGI 调用内运行，也算“进行中的请求”：按并发流水线数设置
    max_ongoing_requests=1000,
    # 优雅关闭时等待在途流水线的时长
    graceful_shutdown_timeout_s=120,
)(serve.ingress()(ReportIngress))
