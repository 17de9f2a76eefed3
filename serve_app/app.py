"""应用构建器：serve_config.yaml 的 `import_path` 指向 `build_app`。"""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application, Deployment

from deployments.callback import CallbackSender
from deployments.llm import build_llm_server
from deployments.render import TemplateRenderer
from serve_app.core.logging import configure_logging
from serve_app.core.settings import LLMMode, Settings
from serve_app.ingress import ReportIngress


def _deployment(obj: object) -> Deployment:
    """`@serve.deployment` 修饰后的类是 Deployment（mypy 看不到类装饰器的返回类型）。"""
    assert isinstance(obj, Deployment)
    return obj


def compose_app(settings: Settings, llm: Application | None) -> Application:
    """把各部署组装成一个应用；`llm` 为 LLMServer（或测试用的同接口部署）。"""
    renderer = _deployment(TemplateRenderer).bind(settings)
    callbacks = _deployment(CallbackSender).bind(settings)
    return _deployment(ReportIngress).bind(settings, renderer, callbacks, llm)


def build_app(args: dict[str, Any]) -> Application:
    """校验 `args`（未知字段直接报错），解析配置一次，组装应用。"""
    settings = Settings(**args)
    configure_logging(settings.log_level, settings.log_json_path)
    llm = build_llm_server(settings.engine) if settings.llm_mode is LLMMode.SERVE_LLM else None
    return compose_app(settings, llm)
