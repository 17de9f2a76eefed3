"""应用构建器：serve_config.yaml 的 `import_path` 指向 `build_app`。"""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application

from deployments.callback import callback_sender_deployment
from deployments.ingress import report_ingress_deployment
from deployments.ledger import ledger_deployment
from deployments.llm import build_llm_server
from deployments.render import template_renderer_deployment
from serve_app.core.logging import configure_logging
from serve_app.core.settings import LLMMode, Settings


def compose_app(
    settings: Settings, llm: Application | None, ingress_options: dict[str, Any] | None = None
) -> Application:
    """把各部署组装成一个应用；`llm` 为 LLMServer（或测试用的同接口部署）。

    ingress_options：入口部署的额外选项，如固定副本数或扩缩配置（故障测试用；serve_config 里
    对 ReportIngress 的设置优先）。
    """
    renderer = template_renderer_deployment.bind(settings)
    callbacks = callback_sender_deployment.bind(settings)
    # 两种账本都有 Ledger 部署（serve_config 通用）；Postgres 账本时入口不经它、直连数据库。
    # SQLite 账本时作业的收尾（记结果、投递、记投递）在 Ledger 副本里做：它要回调部署的句柄
    ledger = ledger_deployment.bind(settings, callbacks)
    # 优雅关闭窗口要容下作业的排空时间（serve_config 里另写的值优先）
    ingress = report_ingress_deployment.options(
        graceful_shutdown_timeout_s=settings.jobs.drain_timeout_s + 30
    )
    if ingress_options:
        ingress = ingress.options(**ingress_options)
    return ingress.bind(settings, renderer, callbacks, ledger, llm)


def build_app(args: dict[str, Any]) -> Application:
    """校验 `args`（未知字段直接报错），解析配置一次，组装应用。"""
    settings = Settings.from_args(args)
    configure_logging(settings.log_level, settings.log_json_path)
    llm = build_llm_server(settings.engine) if settings.llm_mode is LLMMode.SERVE_LLM else None
    return compose_app(settings, llm)
