"""多节点层：用 cluster/ 的脚本在 127.0.0.1 上起 Ray head 与一个 worker 节点，再用 deploy.sh
把 CPU 配置（缩短了扩缩延迟）`serve deploy` 上去。整个模块共用一套集群。"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.build_tiny_model import build_tiny_model
from serve_app.core.settings import PROJECT_ROOT
from tests.support.cluster import free_port
from tests.support.ray_nodes import SCRIPTS, ClusterApi, RayNode
from tests.support.receiver import CallbackReceiver

APP = "reports"
LLM_DEPLOYMENT = "LLMServer:report-llm"
DEPLOY_TIMEOUT_S = 900
# 测试用的扩缩参数：每副本目标排队 2 个，持续 2s 超标就扩，空闲 15s 就缩
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2,
    "downscale_delay_s": 15,
}


@dataclass
class MultiNode:
    """一套运行中的多节点集群与部署在其上的应用。"""

    base_url: str
    api: ClusterApi
    receiver: CallbackReceiver
    head: RayNode
    workers: list[RayNode]
    node_env: dict[str, str]
    workdir: Path
    dashboard: str
    config_path: Path
    node_ids: dict[str, str] = field(default_factory=dict)

    def deploy(self, config_path: Path) -> None:
        """用 cluster/deploy.sh 把一份配置 serve deploy 到运行中的集群，等 /readyz 变绿。"""
        subprocess.run(
            [str(SCRIPTS / "deploy.sh")],
            env=self.node_env
            | {
                "SERVE_CONFIG": str(config_path),
                "RAY_DASHBOARD_ADDRESS": self.dashboard,
                "READY_URL": f"{self.base_url}/readyz",
                "DEPLOY_TIMEOUT_S": str(DEPLOY_TIMEOUT_S),
            },
            check=True,
            timeout=DEPLOY_TIMEOUT_S + 60,
        )

    def start_worker(self) -> RayNode:
        """再起一个 LLM worker 节点并加入集群。"""
        log = self.workdir / f"worker-{len(self.workers)}.log"
        worker = RayNode("start_worker.sh", self.node_env | {"RAY_NUM_CPUS": "4"}, log).start()
        self.workers.append(worker)
        return worker


def _test_config(http_port: int) -> dict[str, Any]:
    """由 serve_config.cpu.yaml 派生：只改端口、超时/重试与扩缩延迟，放置规则原样保留。"""
    config: dict[str, Any] = yaml.safe_load(
        (PROJECT_ROOT / "serve_config.cpu.yaml").read_text(encoding="utf-8")
    )
    config["http_options"]["port"] = http_port
    [app] = config["applications"]
    app["args"]["llm"] = {"timeout_s": 120, "max_attempts": 3, "max_backoff_s": 5}
    app["args"]["callback"] = {"max_attempts": 3, "initial_backoff_s": 0.2, "max_backoff_s": 1}
    for deployment in app["deployments"]:
        if deployment["name"] == LLM_DEPLOYMENT:
            deployment["max_ongoing_requests"] = 8
            deployment["autoscaling_config"] = AUTOSCALING
    return config


@pytest.fixture(scope="package")
def multinode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    """head + worker + 部署；结束时经各自的 PID 关闭全部节点。"""
    workdir = tmp_path_factory.mktemp("multinode")
    model_dir = build_tiny_model(workdir / "tiny-model")
    gcs_port, dashboard_port, http_port = free_port(), free_port(), free_port()
    config_path = workdir / "serve_config.test.yaml"
    config_path.write_text(yaml.safe_dump(_test_config(http_port), allow_unicode=True))
    token = secrets.token_hex(32)
    node_env = {
        **os.environ,
        "RAY_AUTH_TOKEN": token,
        "RAY_NODE_IP": "127.0.0.1",
        "RAY_GCS_PORT": str(gcs_port),
        "RAY_DASHBOARD_PORT": str(dashboard_port),
        "RAY_HEAD_ADDRESS": f"127.0.0.1:{gcs_port}",
        # 构建器在集群里解析 Settings：模型经节点进程的环境传入
        "REPORTS_ENGINE__MODEL_SOURCE": str(model_dir),
        # 账本放在本层的临时目录（Ledger 要求 head 广播的 reports_ledger）
        "REPORTS_JOBS__LEDGER_PATH": str(workdir / "ledger.sqlite3"),
        # 本层结束时整个集群一起关（worker 丢失用的是 SIGKILL）：节点不必排空，省下每个节点约 30 秒
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    head = RayNode("start_head.sh", node_env | {"RAY_NUM_CPUS": "2"}, workdir / "head.log")
    api = ClusterApi(dashboard, token)
    cluster = MultiNode(
        base_url=f"http://127.0.0.1:{http_port}",
        api=api,
        receiver=CallbackReceiver(),
        head=head,
        workers=[],
        node_env=node_env,
        workdir=workdir,
        dashboard=dashboard,
        config_path=config_path,
    )
    try:
        head.start("--block")
        cluster.start_worker()
        cluster.receiver.start()
        cluster.deploy(config_path)
        yield cluster
    finally:
        cluster.receiver.stop()
        api.close()
        for worker in cluster.workers:
            worker.stop()
        head.stop()
