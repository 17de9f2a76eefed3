"""多节点测试：用 cluster/ 下容器同款脚本在 127.0.0.1 上起 Ray 节点，经自己的 PID / 进程组关闭。"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psutil

from cluster.ports import free_port_block, release_port_block
from serve_app.core.settings import PROJECT_ROOT
from tests.support.waiting import wait_until

SCRIPTS = PROJECT_ROOT / "cluster"


class RayNode:
    """一个由脚本以 `--block` 前台启动的 Ray 节点（独立会话）。"""

    def __init__(self, script: str, env: dict[str, str], log_path: Path) -> None:
        self._script = script
        self._env = env
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.port_base = 0

    def start(self, *extra: str) -> RayNode:
        """启动节点进程（不等待加入集群）。"""
        self.port_base = free_port_block()
        args = [str(SCRIPTS / self._script), *extra]
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                env=self._env | {"RAY_PORT_BASE": str(self.port_base)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        """节点进程（ray start --block）的 PID，也是其进程组号。"""
        assert self._process is not None
        return self._process.pid

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM 给 ray start：Ray 自行排空并关闭本节点的进程；超时再对进程组 SIGKILL。"""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        release_port_block(self.port_base)

    def kill(self) -> None:
        """模拟节点突然消失（如容器被杀）：本节点起的全部进程一起 SIGKILL。

        先记下 ray start 的全部后代（raylet、副本 worker、vLLM 引擎进程……，有的在自己的进程组里），
        再杀进程组与这些 PID：只动本测试启动的进程，不留孤儿占用 CPU 与内存。
        """
        if self._process is None or self._process.poll() is not None:
            return
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in descendants:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(descendants, timeout=30)
        self._process.wait(timeout=30)
        release_port_block(self.port_base)


class ClusterApi:
    """经 dashboard 的 REST API（带 token）查询节点与 Serve 部署状态。"""

    def __init__(self, dashboard_url: str, token: str) -> None:
        self._client = httpx.Client(
            base_url=dashboard_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def close(self) -> None:
        """关闭连接。"""
        self._client.close()

    def alive_nodes(self) -> list[dict[str, Any]]:
        """存活节点（含 node_id、is_head_node、resources_total）。"""
        response = self._client.get("/api/v0/nodes", params={"detail": 1, "limit": 100})
        response.raise_for_status()
        nodes: list[dict[str, Any]] = response.json()["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def head_node_id(self) -> str:
        """head 节点 id。"""
        [head] = [n for n in self.alive_nodes() if n["is_head_node"]]
        node_id: str = head["node_id"]
        return node_id

    def deployment(self, app: str, name: str) -> dict[str, Any]:
        """一个部署的详情（target_num_replicas、replicas 及其 node_id/state）。"""
        response = self._client.get("/api/serve/applications/")
        response.raise_for_status()
        details: dict[str, Any] = response.json()["applications"][app]["deployments"][name]
        return details

    def wait_for(self, predicate: Any, timeout_s: float, what: str) -> None:
        """轮询直到 predicate() 为真。"""
        wait_until(
            predicate,
            what=what,
            timeout_s=timeout_s,
            interval_s=1,
            ignore=(httpx.HTTPError, KeyError, ValueError),
        )
