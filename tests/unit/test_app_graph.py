"""应用图：两种账本下都绑定 Ledger 部署（每个 serve_config 都列了它，缺了 serve deploy 会失败）。"""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve.deployment import Application

from deployments.app import compose_app
from serve_app.core.settings import Settings


def _bound_names(app: Application) -> list[str | None]:
    """入口构造参数里各子应用的部署名（不是子应用的参数记 None）。"""
    ingress = app._bound_deployment
    assert ingress.name == "ReportIngress"
    return [
        arg._bound_deployment.name if isinstance(arg, Application) else None
        for arg in ingress.init_args
    ]


@pytest.mark.parametrize(
    "jobs", [{}, {"ledger_url": "postgresql://reports:secret@127.0.0.1:5432/reports"}]
)
def test_every_ledger_kind_binds_the_ledger_deployment(jobs: dict[str, Any]) -> None:
    settings = Settings.from_args({"llm_mode": "external", "auth_required": False, "jobs": jobs})
    names = _bound_names(compose_app(settings, None))
    # 构造参数：settings、渲染、回调、账本、LLM（外部模式没有）
    assert names == [None, "TemplateRenderer", "CallbackSender", "Ledger", None]


def test_ingress_gets_fixed_replicas_or_an_autoscaling_config() -> None:
    # 故障层用它部署两个入口副本、或让入口按在途请求扩缩
    settings = Settings.from_args({"llm_mode": "external", "auth_required": False})
    fixed = compose_app(settings, None, {"num_replicas": 2})._bound_deployment
    assert fixed.num_replicas == 2 and fixed._deployment_config.autoscaling_config is None
    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2}
    auto_options = {"num_replicas": "auto", "autoscaling_config": scaling}
    auto = compose_app(settings, None, auto_options)._bound_deployment
    config = auto._deployment_config.autoscaling_config
    assert config is not None and (config.min_replicas, config.max_replicas) == (1, 2)
