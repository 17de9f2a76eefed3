"""真实 Serve：/readyz 读的部署状态——副本还在初始化时算“没有副本”，初始化完才算在。

入口副本常比渲染副本先起来（渲染副本启动时试编译 JSON schema，慢机器上十来秒）：以前 /readyz
那时就答 200，部署脚本与基准以为整条流水线已能干活。
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from ray import serve
from ray.serve.deployment import Deployment

from deployments.handles.replicas import StagesWithoutReplicas, read_app_replicas
from tests.support.waiting import wait_until_async

APP = "readiness-probe"


class SlowStage:
    """初始化要等测试放行（像启动慢的渲染副本）。"""

    def __init__(self, gate: str) -> None:
        deadline = time.monotonic() + 120
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    async def __call__(self) -> str:
        return "ok"


slow_stage: Deployment = serve.deployment(name="SlowStage", ray_actor_options={"num_cpus": 0})(
    SlowStage
)


@pytest.mark.usefixtures("serve_cluster")
async def test_a_replica_still_initializing_is_reported_until_it_runs(tmp_path: Path) -> None:
    gate = tmp_path / "open"
    # serve.run 等到应用跑起来才返回：放在线程里，本线程在副本初始化期间读状态
    deploying = threading.Thread(
        target=serve.run,
        args=(slow_stage.bind(str(gate)),),
        kwargs={"name": APP, "route_prefix": "/" + APP},
        daemon=True,
    )
    deploying.start()
    probe = StagesWithoutReplicas(APP, ["SlowStage", "NoSuchStage"])
    try:

        async def initializing() -> bool:
            snapshot = read_app_replicas(APP).get("SlowStage")
            return snapshot is not None and snapshot.starting == 1

        await wait_until_async(
            initializing, what="SlowStage 的副本开始初始化", timeout_s=60, interval_s=0.2
        )
        assert await probe() == ["SlowStage", "NoSuchStage"]
        gate.touch()

        async def running() -> bool:
            return await probe() == ["NoSuchStage"]

        await wait_until_async(
            running, what="SlowStage 初始化完后算作有副本", timeout_s=60, interval_s=0.2
        )
        deploying.join(timeout=60)
    finally:
        gate.touch()
        serve.delete(APP)
