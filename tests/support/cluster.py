"""测试用的 Ray 集群与 Serve：本进程启动、本进程关闭（经自己的句柄，不按名字杀进程）。"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve

from serve_app.core.settings import PROJECT_ROOT
from tests.support.local_http import free_port, wait_http_ok

__all__ = [
    "ServeCluster",
    "cpu_profile_args",
    "free_port",
    "read_json_logs",
    "running_cluster",
    "start_cluster",
    "stop_cluster",
    "wait_http_ok",
]

# 逻辑 CPU 数：LLMServer 的 placement group 要整块 CPU，轻量部署各占零头；
# 在 2 核机器上多报一些逻辑 CPU，避免调度互相等待（真实算力仍由操作系统分配）。
LOGICAL_CPUS = 8
# 单节点同时扮演 head 与 LLM worker：广播 serve_config 里两类部署要求的自定义资源
NODE_RESOURCES = {"reports_cpu": 100.0, "reports_ledger": 1.0, "reports_llm": 100.0}
# 与 cluster/ray_env.sh 的默认相同（单元测试逐项比对）：Serve 的吞吐模式 + HAProxy。
# 经本进程的环境传给 ray.init 起的 raylet 与各 worker（controller、副本在那里读它）；
# 本进程已导入的 ray.serve 常量不变，驱动里的同步句柄照常可用
SERVE_MODE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
}


def cpu_profile_args() -> dict[str, Any]:
    """serve_config.cpu.yaml 里应用的 args（与 make run 用的同一份配置）。"""
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.cpu.yaml").read_text(encoding="utf-8"))
    args: dict[str, Any] = config["applications"][0]["args"]
    return args


@dataclass(frozen=True)
class ServeCluster:
    """已启动的 Ray + Serve；`base_url` 为 Serve HTTP 入口。"""

    base_url: str


def start_cluster(*, metrics_report_interval_ms: int | None = None) -> ServeCluster:
    """启动本地 Ray 与 Serve（HTTP 只监听 127.0.0.1）。

    给了 metrics_report_interval_ms 时带上 dashboard（它写 Prometheus 的服务发现文件）、
    固定指标端口，并按这个间隔导出指标（metrics 层用；默认 10 秒太慢）。
    """
    port = free_port()
    metrics: dict[str, Any] = {}
    if metrics_report_interval_ms is not None:
        metrics = {
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            "_metrics_export_port": free_port(),
            "_system_config": {"metrics_report_interval_ms": metrics_report_interval_ms},
        }
    for name, value in SERVE_MODE_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(
        # 总是新起一个本地集群：不去连机器上别的 Ray（如多节点测试或 make run 起的）
        address="local",
        num_cpus=LOGICAL_CPUS,
        resources=NODE_RESOURCES,
        include_dashboard=metrics_report_interval_ms is not None,
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}},
        **metrics,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return ServeCluster(base_url=f"http://127.0.0.1:{port}")


def stop_cluster() -> None:
    """关闭 Serve 与 Ray。"""
    try:
        serve.shutdown()  # type: ignore[no-untyped-call]  # Ray 未标注类型
    finally:
        ray.shutdown()


def read_json_logs(path: Path, offset: int = 0) -> Iterator[dict[str, Any]]:
    """读取 loguru 序列化日志（每行一条 JSON）的 record 部分。"""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        handle.seek(offset)
        for line in handle:
            line = line.strip()
            if line:
                record: dict[str, Any] = json.loads(line)["record"]
                yield record


@contextmanager
def running_cluster(*, metrics_report_interval_ms: int | None = None) -> Iterator[ServeCluster]:
    """一个测试层用的进程内 Ray + Serve：退出时一定关闭（下一层从干净的机器开始）。"""
    cluster = start_cluster(metrics_report_interval_ms=metrics_report_interval_ms)
    try:
        yield cluster
    finally:
        stop_cluster()
