"""集成层：整个 Serve 应用在本进程的 Ray 里运行，LLM 阶段换成假引擎，回调发给真实接收方。"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray import serve

from deployments.app import compose_app
from serve_app.core.settings import Settings
from tests.support.cluster import ServeCluster, running_cluster, wait_http_ok
from tests.support.fake_engine import fake_llm_deployment
from tests.support.receiver import CallbackReceiver

APP_NAME = "reports-it"
ROUTE = "/it"
# 假引擎在 [[sleep:N]] 时睡 N 秒；LLM 超时设得比它短
LLM_TIMEOUT_S = 3.0
LLM_ATTEMPTS = 2
CALLBACK_ATTEMPTS = 3


@dataclass(frozen=True)
class ItApp:
    """已部署的集成测试应用。"""

    base_url: str
    receiver: CallbackReceiver
    log_path: Path
    settings: Settings


@pytest.fixture(scope="package")
def serve_cluster() -> Iterator[ServeCluster]:
    """本层一个进程内 Ray + Serve；本层测试结束即关闭。"""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="package")
def it_app(
    serve_cluster: ServeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ItApp]:
    """部署一次，整个集成层共用。"""
    log_path = tmp_path_factory.mktemp("it-logs") / "jobs.jsonl"
    settings = Settings(
        _env_file=None,
        engine={"model_id": "report-llm", "model_source": "fake"},
        templates_path=Path(__file__).with_name("templates.yaml"),
        llm={
            "timeout_s": LLM_TIMEOUT_S,
            "max_attempts": LLM_ATTEMPTS,
            "initial_backoff_s": 0.05,
            "max_backoff_s": 0.1,
        },
        callback={
            "connect_timeout_s": 1,
            "read_timeout_s": 5,
            "max_attempts": CALLBACK_ATTEMPTS,
            "initial_backoff_s": 0.05,
            "max_backoff_s": 0.2,
            "jitter_s": 0.05,
        },
        log_json_path=log_path,
        jobs={
            "ledger_path": log_path.with_name("ledger.sqlite3"),
            "lease_s": 4,
            "heartbeat_s": 1,
            "sweep_interval_s": 0.5,
            "drain_timeout_s": 5,
        },
        auth_required=False,
        callback_allow_loopback=True,
        # 只接受回调到 127.0.0.1：白名单先于 DNS 检查，模糊测试的随机主机名不会触发任何解析
        callback_allowed_hosts=("127.0.0.1",),
        log_level="DEBUG",
    )
    app = compose_app(settings, fake_llm_deployment.bind(settings.engine.model_id))
    with CallbackReceiver() as receiver:
        serve.run(app, name=APP_NAME, route_prefix=ROUTE)
        base_url = serve_cluster.base_url + ROUTE
        try:
            wait_http_ok(base_url + "/readyz", timeout_s=120)
            yield ItApp(base_url, receiver, log_path, settings)
        finally:
            serve.delete(APP_NAME)
