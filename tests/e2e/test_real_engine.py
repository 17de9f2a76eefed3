"""真实 vLLM（CPU）端到端：集群内 LLMServer 与外部 OpenAI 兼容服务两种模式。"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from cluster.callback_receiver import ReceivedCallback
from tests.e2e.conftest import E2EStack

WAIT_S = 300.0


def _types(base_url: str) -> list[dict[str, Any]]:
    response = httpx.get(base_url + "/v1/report-types", timeout=30)
    assert response.status_code == 200
    types: list[dict[str, Any]] = response.json()
    return types


def _submit_all(stack: E2EStack, base_url: str, types: list[dict[str, Any]]) -> dict[str, str]:
    """每个类型提交一份（short 篇幅），返回 trace_id → 类型。"""
    submitted: dict[str, str] = {}
    for item in types:
        body = {
            "report_type": item["name"],
            "inputs": item["example_inputs"],
            "length": "short",
            "callback_url": stack.receiver.url,
            "metadata": {"type": item["name"]},
        }
        response = httpx.post(base_url + "/v1/reports", json=body, timeout=30)
        assert response.status_code == 202, response.text
        submitted[response.json()["trace_id"]] = item["name"]
    return submitted


def _wait_until(condition: Callable[[], bool], message: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def _wait_callbacks(stack: E2EStack, trace_ids: set[str]) -> dict[str, ReceivedCallback]:
    def got() -> dict[str, ReceivedCallback]:
        return {tid: r for tid, r in stack.receiver.delivered().items() if tid in trace_ids}

    _wait_until(lambda: len(got()) == len(trace_ids), f"{WAIT_S}s 内没有收齐回调")
    return got()


def _assert_real_report(
    callback: ReceivedCallback, report_type: str, model: str, max_tokens: int
) -> None:
    body = callback.body
    assert body["status"] == "succeeded", body
    assert body["report_type"] == report_type
    assert body["metadata"] == {"type": report_type}
    report = body["report"]
    assert report["content"].strip()
    assert report["model"] == model
    assert report["finish_reason"] in {"stop", "length"}
    usage = report["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= max_tokens


def test_every_report_type_on_in_cluster_llmserver(e2e_stack: E2EStack) -> None:
    types = _types(e2e_stack.internal_url)
    assert len(types) >= 4
    submitted = _submit_all(e2e_stack, e2e_stack.internal_url, types)
    callbacks = _wait_callbacks(e2e_stack, set(submitted))
    presets = {t["name"]: t["lengths"]["short"]["max_tokens"] for t in types}
    for trace_id, report_type in submitted.items():
        callback = callbacks[trace_id]
        assert callback.headers["x-trace-id"] == trace_id
        _assert_real_report(callback, report_type, "report-llm", presets[report_type])


def test_every_report_type_on_external_vllm_server(e2e_stack: E2EStack) -> None:
    types = _types(e2e_stack.external_url)
    submitted = _submit_all(e2e_stack, e2e_stack.external_url, types)
    callbacks = _wait_callbacks(e2e_stack, set(submitted))
    presets = {t["name"]: t["lengths"]["short"]["max_tokens"] for t in types}
    for trace_id, report_type in submitted.items():
        _assert_real_report(
            callbacks[trace_id], report_type, e2e_stack.external_model, presets[report_type]
        )


def test_readiness_reflects_real_engines(e2e_stack: E2EStack) -> None:
    for base_url in (e2e_stack.internal_url, e2e_stack.external_url):
        response = httpx.get(base_url + "/readyz", timeout=30)
        assert response.status_code == 200 and response.json() == {"status": "ready"}


def _engine_metrics(stack: E2EStack) -> dict[str, float]:
    """外部 vLLM 服务的 Prometheus 指标：在跑/排队的请求数、正常结束的请求数、生成的 token 总数。"""
    text = httpx.get(stack.external_metrics_url, timeout=30).text
    totals = {"running": 0.0, "waiting": 0.0, "finished": 0.0, "generated": 0.0}
    names = {
        "vllm:num_requests_running{": "running",
        "vllm:num_requests_waiting{": "waiting",
        "vllm:request_success_total{": "finished",
        "vllm:generation_tokens_total{": "generated",
    }
    for line in text.splitlines():
        for prefix, key in names.items():
            if line.startswith(prefix):
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


# 生成最长的类型与篇幅（2048 个 token）：给取消留出足够的时间窗
LONGEST_TYPE = "incident_postmortem"
LONGEST_TOKENS = 2048


def _cancel_long_reports(
    stack: E2EStack,
    base_url: str,
    count: int = 4,
    engine_started: Callable[[], bool] | None = None,
) -> tuple[list[str], list[str]]:
    """提交几份最长的报告，都进入 generating（且引擎已在生成）后全部取消。

    e2e 的引擎一次只跑一个序列（见 conftest），取消到达时第一份在引擎里生成、其余在引擎里
    排队。返回 (取消成功的, 取消前已生成完的)：控制面在慢机器上可能被饿住，个别作业先生成完
    （DELETE 得 409）是允许的，但至少要有一个真正被取消。
    """
    [item] = [t for t in _types(base_url) if t["name"] == LONGEST_TYPE]
    assert item["lengths"]["long"]["max_tokens"] == LONGEST_TOKENS
    body = {
        "report_type": LONGEST_TYPE,
        "inputs": item["example_inputs"],
        "length": "long",
        "callback_url": stack.receiver.url,
    }
    trace_ids: list[str] = []
    for _ in range(count):
        response = httpx.post(base_url + "/v1/reports", json=body, timeout=30)
        assert response.status_code == 202, response.text
        trace_ids.append(response.json()["trace_id"])

    def all_generating() -> bool:
        statuses = [
            httpx.get(f"{base_url}/v1/reports/{trace_id}", timeout=30).json()["status"]
            for trace_id in trace_ids
        ]
        return all(s not in ("accepted", "rendering") for s in statuses)

    _wait_until(all_generating, "作业没有进入生成")
    if engine_started is not None:
        _wait_until(engine_started, "引擎里没有开始生成")
    cancelled: list[str] = []
    finished: list[str] = []
    # 后提交的先取消：它们还在引擎里排队
    for trace_id in reversed(trace_ids):
        cancel = httpx.delete(f"{base_url}/v1/reports/{trace_id}", timeout=30)
        assert cancel.status_code in (202, 409), cancel.text
        (cancelled if cancel.status_code == 202 else finished).append(trace_id)
    assert cancelled, "每个作业都在取消到达前生成完了，无法证明取消"
    callbacks = _wait_callbacks(stack, set(trace_ids))
    for trace_id in cancelled:
        body_ = callbacks[trace_id].body
        assert body_["status"] == "cancelled" and body_["report"] is None
    for trace_id in finished:
        assert callbacks[trace_id].body["status"] == "succeeded"
    return cancelled, finished


def test_cancel_aborts_generation_in_the_real_engine(e2e_stack: E2EStack) -> None:
    before = _engine_metrics(e2e_stack)
    count = 4
    cancelled, finished = _cancel_long_reports(
        e2e_stack,
        e2e_stack.external_url,
        count,
        engine_started=lambda: _engine_metrics(e2e_stack)["running"] >= 1,
    )
    # 被取消的请求在引擎里中止：很快既不在跑也不在排队，且不是全部都“正常结束”了
    # （赛跑中先生成完的、或取消到达时引擎恰好刚生成完的，会计入正常结束）
    time.sleep(2)
    after = _engine_metrics(e2e_stack)
    assert after["running"] == 0 and after["waiting"] == 0, after
    assert len(finished) <= after["finished"] - before["finished"] < count, (before, after)
    assert after["generated"] - before["generated"] < count * LONGEST_TOKENS
    # 集群内 LLMServer：同样得到 cancelled 回调，状态为 cancelled
    cancelled, _ = _cancel_long_reports(e2e_stack, e2e_stack.internal_url, count)
    for trace_id in cancelled:
        status = httpx.get(f"{e2e_stack.internal_url}/v1/reports/{trace_id}", timeout=30).json()
        assert status["status"] == "cancelled" and status["callback"]["state"] == "delivered"
