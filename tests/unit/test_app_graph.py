"""应用图：两种账本下都绑定 Ledger 部署（每个 serve_config 都列了它，缺了 serve deploy 会失败）；
控制面的部署模块不带进 torch。"""

from __future__ import annotations

import subprocess
import sys
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


# 副本进程导入的是部署类所在的模块：这四个是入口、渲染、账本、回调副本各自导入的
_CONTROL_PLANE = (
    "deployments.ingress",
    "deployments.render",
    "deployments.ledger",
    "deployments.callback",
)


def test_control_plane_replicas_do_not_import_torch() -> None:
    """入口、渲染、账本、回调的部署模块导入时不带进 torch / transformers / vLLM（只有 LLM 副本要；
    渲染副本启动时为试编译 JSON schema 才惰性加载 xgrammar）。

    以前经 deployments/ray_private.py 导入了 ray.llm 的内部配置模块：每个控制面副本多约 500 MB
    内存、启动多约 4 秒（入口扩容时新副本就慢这么多）。在新的解释器里导入，不受别的测试已导入的
    模块影响。"""
    probe = (
        f"import sys, {', '.join(_CONTROL_PLANE)}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'vllm'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
