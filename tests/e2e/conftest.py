"""e2e 层：真实 vLLM（CPU）+ 现场生成的小模型。整个层共用一次部署。"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray import serve

from cluster.build_tiny_model import build_tiny_model
from deployments.app import build_app
from serve_app.core.settings import PROJECT_ROOT
from tests.support.cluster import ServeCluster, running_cluster, wait_http_ok
from tests.support.receiver import CallbackReceiver
from tests.support.vllm_server import VLLMServer

# 首次部署要加载 torch/vLLM 并初始化引擎，2 核机器上需要几分钟
DEPLOY_TIMEOUT_S = 600
INTERNAL_APP = "reports-e2e"
# Ray 给 worker 进程（各 Serve 副本）设的 nice 值（raylet 配置 worker_niceness 的默认值）
RAY_WORKER_NICENESS = 15


@dataclass(frozen=True)
class E2EStack:
    """集群内模式与外部模式两个应用，以及共用的回调接收方。"""

    internal_url: str
    external_url: str
    external_model: str
    external_metrics_url: str
    external_pid: int
    external_log: Path
    receiver: CallbackReceiver

    def llm_replica_pid(self) -> int:
        """集群内 LLMServer 副本的进程 PID（它的子进程是 vLLM 引擎核心）。"""
        prefix = f"SERVE_REPLICA::{INTERNAL_APP}#LLMServer:"
        names = [
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(prefix)
        ]
        assert len(names) == 1, names
        replica = ray.get_actor(names[0], namespace="serve")
        pid: object = ray.get(replica.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
        assert isinstance(pid, int)
        return pid

    def llm_replica_log(self, pid: int) -> str:
        """LLMServer 副本进程的标准输出日志（vLLM 的请求日志在这里）。"""
        node = ray._private.worker.global_worker.node
        assert node is not None, "Ray 未初始化"
        logs_dir = Path(node.get_logs_dir_path())
        [path] = logs_dir.glob(f"worker-*-{pid}.out")
        return path.read_text(encoding="utf-8", errors="replace")


def _cpu_profile_args() -> dict[str, Any]:
    """serve_config.cpu.yaml 里应用的 args（与 make run 用的同一份配置）。"""
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.cpu.yaml").read_text(encoding="utf-8"))
    args: dict[str, Any] = config["applications"][0]["args"]
    return args


@pytest.fixture(scope="package")
def serve_cluster() -> Iterator[ServeCluster]:
    """本层一个进程内 Ray + Serve；本层测试结束即关闭。"""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="package")
def e2e_stack(
    serve_cluster: ServeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2EStack]:
    """生成小模型，启动外部 vLLM 服务，并部署两个模式的应用。"""
    workdir = tmp_path_factory.mktemp("e2e")
    model_dir = build_tiny_model(workdir / "tiny-model")
    # 上下文与集群内引擎相同（4096），最长的报告（2048 个 token）也放得下
    external = VLLMServer(
        model_dir,
        served_name="tiny-external",
        log_path=workdir / "vllm.log",
        max_model_len=4096,
        log_requests=True,
        # 与 Ray worker 同一优先级（Ray 默认 worker_niceness=15）：否则在 2 核机器上生成期间
        # 外部引擎的进程压过集群里所有副本，入口、账本、回调整段停住
        niceness=RAY_WORKER_NICENESS,
    )
    # 外部服务先起，与 LLMServer 的部署并行加载
    external.start()
    try:
        with CallbackReceiver() as receiver:
            args = _cpu_profile_args()
            args["engine"] = {
                **args["engine"],
                "model_source": str(model_dir),
                # 每个请求的收到 / 中止写进副本日志（取消测试据此确认引擎里中止了）
                "engine_kwargs": {**args["engine"]["engine_kwargs"], "enable_log_requests": True},
            }
            # 每个应用一个临时账本（不碰仓库里 make run 的 .run/ledger.sqlite3）
            args["jobs"] = {"ledger_path": str(workdir / "ledger-e2e.sqlite3")}
            serve.run(build_app(args), name=INTERNAL_APP, route_prefix="/e2e")
            external.wait_ready(DEPLOY_TIMEOUT_S)
            serve.run(
                build_app(
                    {
                        "llm_mode": "external",
                        "vllm_api_url": external.base_url,
                        "external": {"model": external.served_name},
                        "auth_required": False,
                        "callback_allow_loopback": True,
                        "jobs": {"ledger_path": str(workdir / "ledger-ext.sqlite3")},
                    }
                ),
                name="reports-ext",
                route_prefix="/ext",
            )
            stack = E2EStack(
                internal_url=serve_cluster.base_url + "/e2e",
                external_url=serve_cluster.base_url + "/ext",
                external_model=external.served_name,
                external_metrics_url=external.base_url.removesuffix("/v1") + "/metrics",
                external_pid=external.pid,
                external_log=external.log_path,
                receiver=receiver,
            )
            wait_http_ok(stack.internal_url + "/readyz", DEPLOY_TIMEOUT_S)
            wait_http_ok(stack.external_url + "/readyz", DEPLOY_TIMEOUT_S)
            try:
                yield stack
            finally:
                serve.delete("reports-ext")
                serve.delete(INTERNAL_APP)
    finally:
        external.stop()
