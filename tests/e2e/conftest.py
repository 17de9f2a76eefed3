"""e2e 层：真实 vLLM（CPU）+ 现场生成的小模型。整个层共用一次部署。

同一个集群也承载 metrics 测试（test_prometheus.py，标记 metrics）：Ray 带 dashboard、每秒导出指标，
Debian 的 Prometheus 经 Ray 的服务发现文件每秒抓一次；指标用的应用以外部模式接本层的外部 vLLM，
引擎指标（ray_vllm_*）与整条日志来自集群内 LLMServer 的应用。两层共用引擎，省掉第三次 vLLM 启动。
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from cluster import local_prometheus
from cluster.build_tiny_model import build_tiny_model
from deployments.app import build_app
from serve_app.core.settings import PROJECT_ROOT
from tests.support.cluster import ServeCluster, cpu_profile_args, running_cluster, wait_http_ok
from tests.support.local_http import free_port
from tests.support.receiver import CallbackReceiver
from tests.support.vllm_server import VLLMServer

# 首次部署要加载 torch/vLLM 并初始化引擎，2 核机器上需要几分钟
DEPLOY_TIMEOUT_S = 600
INTERNAL_APP = "reports-e2e"
METRICS_APP = "reports-metrics"
# metrics 应用每个作业最多同时 3 个：第 4 个答 429
METRICS_MAX_ACTIVE = 3
TEMPLATES = PROJECT_ROOT / "tests" / "integration" / "templates.yaml"
# Ray 给 worker 进程（各 Serve 副本）设的 nice 值（raylet 配置 worker_niceness 的默认值）
RAY_WORKER_NICENESS = 15


@dataclass(frozen=True)
class E2EStack:
    """集群内模式与外部模式两个应用，以及共用的回调接收方。"""

    workdir: Path
    external_base_url: str
    internal_url: str
    external_url: str
    metrics_app_url: str
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


@pytest.fixture(scope="package")
def serve_cluster() -> Iterator[ServeCluster]:
    """本层一个进程内 Ray + Serve（带 dashboard，每秒导出指标）；本层测试结束即关闭。"""
    # 先确认 Prometheus 在（没有时以 root 安装）：装不上就不必起集群
    local_prometheus.binaries()
    with running_cluster(metrics_report_interval_ms=1000) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def e2e_stack(
    serve_cluster: ServeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2EStack]:
    """生成小模型，启动外部 vLLM 服务，并一次部署集群内、外部两个模式与指标用的三个应用。"""
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
    # 外部服务先起；三个应用一次部署（副本并行启动），与外部服务的加载重叠
    external.start()
    try:
        with CallbackReceiver() as receiver:
            args = cpu_profile_args()
            args["engine"] = {
                **args["engine"],
                "model_source": str(model_dir),
                # 每个请求的收到 / 中止写进副本日志（取消测试据此确认引擎里中止了）
                "engine_kwargs": {**args["engine"]["engine_kwargs"], "enable_log_requests": True},
            }
            # 每个应用一个临时账本（不碰仓库里 make run 的 .run/ledger.sqlite3）
            args["jobs"] = {"ledger_path": str(workdir / "ledger-e2e.sqlite3")}
            external_args: dict[str, Any] = {
                "llm_mode": "external",
                "vllm_api_url": external.base_url,
                "external": {"model": external.served_name},
                "auth_required": False,
                "callback_allow_loopback": True,
            }
            serve.run_many(
                [
                    serve.RunTarget(build_app(args), name=INTERNAL_APP, route_prefix="/e2e"),
                    serve.RunTarget(
                        build_app(
                            external_args
                            | {"jobs": {"ledger_path": str(workdir / "ledger-ext.sqlite3")}}
                        ),
                        name="reports-ext",
                        route_prefix="/ext",
                    ),
                    # metrics 测试用的应用：模板里有渲染失败的类型，每个作业最多同时 3 个，每秒扫描
                    serve.RunTarget(
                        build_app(
                            external_args
                            | {
                                "templates_path": str(TEMPLATES),
                                "jobs": {
                                    "ledger_path": str(workdir / "ledger-metrics.sqlite3"),
                                    "max_active_jobs": METRICS_MAX_ACTIVE,
                                    "sweep_interval_s": 1,
                                },
                            }
                        ),
                        name=METRICS_APP,
                        route_prefix="/m",
                    ),
                ]
            )
            external.wait_ready(DEPLOY_TIMEOUT_S)
            stack = E2EStack(
                workdir=workdir,
                external_base_url=external.base_url,
                internal_url=serve_cluster.base_url + "/e2e",
                external_url=serve_cluster.base_url + "/ext",
                metrics_app_url=serve_cluster.base_url + "/m",
                external_model=external.served_name,
                external_metrics_url=external.base_url.removesuffix("/v1") + "/metrics",
                external_pid=external.pid,
                external_log=external.log_path,
                receiver=receiver,
            )
            for url in (stack.internal_url, stack.external_url, stack.metrics_app_url):
                wait_http_ok(url + "/readyz", DEPLOY_TIMEOUT_S)
            try:
                yield stack
            finally:
                for app in (METRICS_APP, "reports-ext", INTERNAL_APP):
                    serve.delete(app)
    finally:
        external.stop()


@dataclass(frozen=True)
class MetricsStack:
    """指标用的应用（外部模式）、它的回调接收方、抓整个集群的 Prometheus，以及 Ray 的会话目录。"""

    app_url: str
    prometheus_url: str
    receiver: CallbackReceiver
    session_dir: Path
    engine_pid: int

    def query(self, promql: str) -> list[dict[str, Any]]:
        """即时查询；查询本身出错（语法、类型）即断言失败。"""
        response = httpx.get(
            f"{self.prometheus_url}/api/v1/query", params={"query": promql}, timeout=10
        )
        body: dict[str, Any] = response.json()
        assert response.status_code == 200 and body["status"] == "success", (promql, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """单值查询的值；没有序列时 None。"""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, (promql, result)
        return float(result[0]["value"][1])


def _wait_discovery(session_dir: Path, timeout_s: float = 60) -> Path:
    """等 head 的 dashboard 写出服务发现文件（列出本节点的指标端口）。"""
    path = session_dir / "prom_metrics_service_discovery.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            try:
                targets = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                targets = []
            if targets and targets[0].get("targets"):
                return path
        time.sleep(0.5)
    raise TimeoutError(f"{timeout_s:g}s 内没有服务发现文件 {path}")


@pytest.fixture(scope="package")
def metrics_stack(e2e_stack: E2EStack) -> Iterator[MetricsStack]:
    """起 Prometheus 抓本集群；指标用的应用（外部模式，接本层的外部 vLLM）已随 e2e_stack 部署。"""
    workdir = e2e_stack.workdir
    node = ray._private.worker.global_worker.node
    assert node is not None, "Ray 未初始化"
    session_dir = Path(node.get_session_dir_path())
    config = local_prometheus.write_config(
        workdir / "prometheus.yml", _wait_discovery(session_dir), scrape_interval_s=1
    )
    port = free_port()
    prometheus = local_prometheus.launch(
        config, workdir / "prometheus-data", port, workdir / "prometheus.log"
    )
    try:
        with CallbackReceiver() as receiver:
            yield MetricsStack(
                app_url=e2e_stack.metrics_app_url,
                prometheus_url=f"http://127.0.0.1:{port}",
                receiver=receiver,
                session_dir=session_dir,
                engine_pid=e2e_stack.external_pid,
            )
    finally:
        local_prometheus.stop_process(prometheus.pid)
