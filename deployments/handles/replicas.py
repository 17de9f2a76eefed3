"""读 Serve 控制器里各部署的状态与副本数：LLM 的冷启动判断与 /readyz 都用它。"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.llm.cold_start import ReplicaSnapshot

# 控制器里没有这个部署（还没部署，或名字不对）
MISSING = ReplicaSnapshot(status="MISSING", running=0, starting=0)


def _snapshot(deployment: Any) -> ReplicaSnapshot:
    counts = {str(getattr(k, "value", k)): n for k, n in deployment.replica_states.items()}
    return ReplicaSnapshot(
        status=str(getattr(deployment.status, "value", deployment.status)),
        running=counts.get("RUNNING", 0),
        starting=sum(counts.get(s, 0) for s in ("STARTING", "UPDATING", "RECOVERING")),
    )


def read_app_replicas(app_name: str) -> dict[str, ReplicaSnapshot]:
    """一个应用全部部署的状态（同步、一次控制器往返：在线程里调用）；应用不存在时为空。"""
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: _snapshot(deployment) for name, deployment in app.deployments.items()}


def read_replicas(app_name: str, deployment_name: str) -> ReplicaSnapshot:
    """一个部署的状态与副本数。"""
    return read_app_replicas(app_name).get(deployment_name, MISSING)


class StagesWithoutReplicas:
    """/readyz 的一半：作业要经过的轻量部署里，哪些此刻没有运行中的副本。

    入口副本起来时别的部署可能还在初始化（渲染副本启动要试编译 JSON schema，慢机器上十来秒）：
    那时就答“就绪”，作业会在句柄里等、部署脚本与基准却以为整条流水线已能干活。
    """

    def __init__(self, app_name: str, deployment_names: list[str]) -> None:
        self._app = app_name
        self._names = deployment_names

    @classmethod
    def of(cls, handles: list[DeploymentHandle[Any]]) -> StagesWithoutReplicas:
        """这些句柄指向的部署（同一个应用）。"""
        return cls(handles[0].app_name, [handle.deployment_name for handle in handles])

    async def __call__(self) -> list[str]:
        replicas = await asyncio.to_thread(read_app_replicas, self._app)
        return [name for name in self._names if replicas.get(name, MISSING).running == 0]
