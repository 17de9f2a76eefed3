"""metrics 层：真实 Ray（带 dashboard，每秒导出指标）+ 真实 vLLM（CPU）+ 真实 Prometheus。

Prometheus 经 Ray 的服务发现文件找到节点、每秒抓一次，并加载 cluster/prometheus/alerts.yml。
整个层共用一次部署。
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from ray import serve

from cluster import local_prometheus
from cluster.build_tiny_model import build_tiny_model
from deployments.app import build_app
from serve_app.core.settings import PROJECT_ROOT
from tests.support.cluster import running_cluster, wait_http_ok
from tests.support.local_http import free_port
from tests.support.receiver import CallbackReceiver

APP = "reports-metrics"
DEPLOY_TIMEOUT_S = 600
# 每个作业最多同时 3 个：第 4 个答 429
MAX_ACTIVE = 3
TEMPLATES = PROJECT_ROOT / "tests" / "integration" / "templates.yaml"


@dataclass(frozen=True)
class MetricsStack:
    """应用、它的回调接收方、抓它的 Prometheus，以及 Ray 的会话目录。"""

    app_url: str
    prometheus_url: str
    receiver: CallbackReceiver
    session_dir: Path

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

    def llm_replica_pid(self) -> int:
        """LLMServer 副本进程的 PID（它的子进程是 vLLM 引擎核心）。"""
        prefix = f"SERVE_REPLICA::{APP}#LLMServer:"
        [name] = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)
        ]
        replica = ray.get_actor(name, namespace="serve")
        pid: object = ray.get(replica.__ray_call__.remote(lambda _self: __import__("os").getpid()))
        assert isinstance(pid, int)
        return pid


def _app_args(model_dir: Path, ledger: Path) -> dict[str, Any]:
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.cpu.yaml").read_text(encoding="utf-8"))
    args: dict[str, Any] = config["applications"][0]["args"]
    args["engine"] = {
        **args["engine"],
        "model_source": str(model_dir),
        # vLLM 的请求日志（请求 id = trace_id）：日志搜索要在 LLM 副本里找到它
        "engine_kwargs": {**args["engine"]["engine_kwargs"], "enable_log_requests": True},
    }
    args["templates_path"] = str(TEMPLATES)
    args["jobs"] = {
        "ledger_path": str(ledger),
        "max_active_jobs": MAX_ACTIVE,
        "sweep_interval_s": 1,
    }
    return args


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
def metrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsStack]:
    """部署应用（集群内 LLMServer），起 Prometheus 抓它。"""
    workdir = tmp_path_factory.mktemp("metrics")
    # 先确认 Prometheus 在（没有时安装）：装不上就不必起集群
    local_prometheus.binaries()
    model_dir = build_tiny_model(workdir / "tiny-model")
    with (
        running_cluster(metrics_report_interval_ms=1000) as cluster,
        CallbackReceiver() as receiver,
    ):
        node = ray._private.worker.global_worker.node
        assert node is not None, "Ray 未初始化"
        session_dir = Path(node.get_session_dir_path())
        discovery = _wait_discovery(session_dir)
        config = local_prometheus.write_config(
            workdir / "prometheus.yml", discovery, scrape_interval_s=1
        )
        port = free_port()
        prometheus = local_prometheus.launch(
            config, workdir / "prometheus-data", port, workdir / "prometheus.log"
        )
        try:
            serve.run(
                build_app(_app_args(model_dir, workdir / "ledger.sqlite3")),
                name=APP,
                route_prefix="/m",
            )
            app_url = cluster.base_url + "/m"
            wait_http_ok(app_url + "/readyz", DEPLOY_TIMEOUT_S)
            yield MetricsStack(
                app_url=app_url,
                prometheus_url=f"http://127.0.0.1:{port}",
                receiver=receiver,
                session_dir=session_dir,
            )
        finally:
            try:
                serve.delete(APP)
            finally:
                local_prometheus.stop_process(prometheus.pid)
