"""真实 vLLM（CPU）端到端：集群内 LLMServer 与外部 OpenAI 兼容服务两种模式。"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from tests.e2e.conftest import E2EStack
from tests.support.local_http import wait_job_ended
from tests.support.process_freeze import frozen_descendants
from tests.support.receiver import ReceivedCallback
from tests.support.sample import SCORE_SCHEMA
from tests.support.waiting import wait_until

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
    wait_until(condition, what=message, timeout_s=WAIT_S, interval_s=0.05)


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


REQUEST_SCHEMA = SCORE_SCHEMA
# 必然写不完的 schema：300 个以上的整数放不进 short 篇幅的 256 个 token
UNFINISHABLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["items"],
    "properties": {"items": {"type": "array", "minItems": 300, "items": {"type": "integer"}}},
}


def _submit_json(stack: E2EStack, base_url: str) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """内置的 JSON 类型一份、带 output_schema 的 markdown 类型一份、必然截断的一份。"""
    types = {t["name"]: t for t in _types(base_url)}
    feedback = types["customer_feedback"]
    assert feedback["output"]["format"] == "json"
    requests = [
        ("customer_feedback", None, feedback["output"]["schema"], "short"),
        ("sales_weekly", REQUEST_SCHEMA, REQUEST_SCHEMA, "short"),
        ("sales_weekly", UNFINISHABLE_SCHEMA, None, "short"),
    ]
    submitted: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for report_type, output_schema, expected_schema, length in requests:
        body: dict[str, Any] = {
            "report_type": report_type,
            "inputs": types[report_type]["example_inputs"],
            "length": length,
            "callback_url": stack.receiver.url,
        }
        if output_schema is not None:
            body["output_schema"] = output_schema
        response = httpx.post(base_url + "/v1/reports", json=body, timeout=30)
        assert response.status_code == 202, response.text
        submitted[response.json()["trace_id"]] = (report_type, expected_schema)
    return submitted


def test_json_reports_are_constrained_and_validated_on_both_engine_modes(
    e2e_stack: E2EStack,
) -> None:
    """真实 vLLM 上，两种引擎模式：内置 JSON 类型与请求自带的 schema 都以 succeeded 结束，
    report.data 符合 schema；必然写不完的以 output_truncated 结束。"""
    submitted: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for base_url in (e2e_stack.internal_url, e2e_stack.external_url):
        submitted |= _submit_json(e2e_stack, base_url)
    callbacks = _wait_callbacks(e2e_stack, set(submitted))
    for trace_id, (report_type, schema) in submitted.items():
        body = callbacks[trace_id].body
        if schema is None:
            assert body["status"] == "failed", body
            assert body["error"]["code"] == "output_truncated", body
            continue
        assert body["status"] == "succeeded", body
        report = body["report"]
        assert report["format"] == "json", (report_type, report)
        Draft202012Validator(schema).validate(report["data"])
        assert json.loads(report["content"], strict=False) == report["data"]


def test_readiness_reflects_real_engines(e2e_stack: E2EStack) -> None:
    for base_url in (e2e_stack.internal_url, e2e_stack.external_url):
        response = httpx.get(base_url + "/readyz", timeout=30)
        assert response.status_code == 200 and response.json() == {"status": "ready", "llm": "warm"}


def _engine_metrics(stack: E2EStack) -> dict[str, float]:
    """外部 vLLM 服务的 Prometheus 指标：在跑/排队的请求数、正常结束的请求数、生成的 token 数。

    被中止的请求不计入 request_success_total（vLLM 只记正常结束的）。
    """
    text = httpx.get(stack.external_metrics_url, timeout=30).text
    totals = {"running": 0.0, "waiting": 0.0, "completed": 0.0, "generated": 0.0}
    names = {
        "vllm:num_requests_running{": "running",
        "vllm:num_requests_waiting{": "waiting",
        "vllm:request_success_total{": "completed",
        "vllm:generation_tokens_total{": "generated",
    }
    for line in text.splitlines():
        for prefix, key in names.items():
            if line.startswith(prefix):
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


# 生成最长的类型与篇幅（2048 个 token）
LONGEST_TYPE = "incident_postmortem"
LONGEST_TOKENS = 2048
# 恢复引擎后、中止生效前引擎最多还能走几步：远小于一份报告的长度
TOKENS_AFTER_RESUME = 64
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def _status(base_url: str, trace_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/reports/{trace_id}", timeout=30)
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


def _submit_long(
    stack: E2EStack, base_url: str, count: int, length: str = "long", **extra: Any
) -> list[str]:
    """提交 count 份最长类型的报告（默认最长篇幅；extra 并进请求体，如 priority、deadline_s）。"""
    [item] = [t for t in _types(base_url) if t["name"] == LONGEST_TYPE]
    assert item["lengths"]["long"]["max_tokens"] == LONGEST_TOKENS
    body = {
        "report_type": LONGEST_TYPE,
        "inputs": item["example_inputs"],
        "length": length,
        "callback_url": stack.receiver.url,
        **extra,
    }
    trace_ids = []
    for _ in range(count):
        response = httpx.post(base_url + "/v1/reports", json=body, timeout=30)
        assert response.status_code == 202, response.text
        trace_ids.append(response.json()["trace_id"])
    return trace_ids


def _wait_generating(base_url: str, trace_ids: list[str]) -> None:
    _wait_until(
        lambda: all(_status(base_url, t)["status"] == "generating" for t in trace_ids),
        f"{WAIT_S}s 内作业没有都进入 generating",
    )


def _cancel_all(stack: E2EStack, base_url: str, trace_ids: list[str]) -> None:
    """从后往前取消（都还没生成完，必须都是 202），等到每一份的 cancelled 回调。"""
    for trace_id in reversed(trace_ids):
        cancel = httpx.delete(f"{base_url}/v1/reports/{trace_id}", timeout=30)
        assert cancel.status_code == 202, cancel.text
    callbacks = _wait_callbacks(stack, set(trace_ids))
    for trace_id in trace_ids:
        body = callbacks[trace_id].body
        assert body["status"] == "cancelled" and body["report"] is None, body
        status = wait_job_ended(base_url, trace_id, WAIT_S)
        assert status["status"] == "cancelled" and status["callback"]["state"] == "delivered"


def _log_shows(log: str, event: str, trace_ids: list[str]) -> bool:
    """vLLM 的请求日志（enable_log_requests）里每个 trace_id 都有 event 这一行。"""
    lines = [line for line in log.splitlines() if event in line]
    return all(any(trace_id in line for line in lines) for trace_id in trace_ids)


def _engine_log_shows(stack: E2EStack, event: str, trace_ids: list[str]) -> bool:
    """外部 vLLM 服务的日志。"""
    log = stack.external_log.read_text(encoding="utf-8", errors="replace")
    return _log_shows(log, event, trace_ids)


@contextmanager
def _frozen_mid_generation(stack: E2EStack) -> Iterator[tuple[str, dict[str, float]]]:
    """提交一份长报告，等外部引擎为它生成出 token，冻住引擎进程；产出 (trace_id, 冻住时的指标)。

    冻住后引擎一个 token 也不生成，之后的提交与取消不再和生成速度赛跑（慢机器上控制面可能
    被饿住几秒）。看到 token 与冻住之间若恰好生成完了，就换一份重来。
    """
    attempts: list[str] = []
    for _ in range(5):
        base = _engine_metrics(stack)
        [trace_id] = _submit_long(stack, stack.external_url, 1)

        def producing(trace_id: str = trace_id, tokens: float = base["generated"]) -> bool:
            if _engine_metrics(stack)["generated"] > tokens:
                return True
            return _status(stack.external_url, trace_id)["status"] in TERMINAL

        _wait_until(producing, f"引擎没有开始生成（loadavg={os.getloadavg()}）")
        with frozen_descendants(stack.external_pid):
            # 冻住前引擎已发出的输出，API 服务这段时间内处理完
            time.sleep(1)
            metrics = _engine_metrics(stack)
            if metrics["completed"] == base["completed"]:
                assert _status(stack.external_url, trace_id)["status"] == "generating"
                yield trace_id, metrics
                return
        # 留下每次为什么没成，再失败时能看出是这份报告生成得太短（提前 EOS）还是别的请求恰好结束
        generated = metrics["generated"] - base["generated"]
        finished = metrics["completed"] - base["completed"]
        attempts.append(f"冻住时已生成 {generated:g} 个 token、结束了 {finished:g} 个请求")
        _wait_callbacks(stack, {trace_id})
    raise AssertionError(
        f"5 次都没能在生成中冻住引擎（loadavg={os.getloadavg()}）：{'；'.join(attempts)}"
    )


def test_cancel_aborts_generation_in_the_real_engine(e2e_stack: E2EStack) -> None:
    """外部 vLLM：生成中与排队中的作业被取消后，引擎里中止，不再生成。"""
    stack = e2e_stack
    with _frozen_mid_generation(stack) as (running, frozen):
        # 引擎冻住时再提交两份：请求已交给引擎（日志里有 Received），排在引擎门口
        queued = _submit_long(stack, stack.external_url, 2)
        _wait_until(
            lambda: _engine_log_shows(stack, "Received request", queued), "请求没有到达 vLLM"
        )
        trace_ids = [running, *queued]
        _cancel_all(stack, stack.external_url, trace_ids)
        # 入口取消即断开连接；vLLM 的 API 服务把中止发给（冻住的）引擎后记一行 aborted
        _wait_until(lambda: _engine_log_shows(stack, "aborted", trace_ids), "vLLM 没有中止请求")
    # 恢复后引擎不再生成：既不在跑也不在排队，token 数几乎不变且停住，三份都没有“正常结束”
    _wait_until(
        lambda: (m := _engine_metrics(stack))["running"] == 0 and m["waiting"] == 0,
        "取消后引擎里仍有请求",
    )
    time.sleep(3)
    settled = _engine_metrics(stack)
    time.sleep(2)
    after = _engine_metrics(stack)
    assert after["generated"] == settled["generated"], (settled, after)
    assert after["generated"] - frozen["generated"] < TOKENS_AFTER_RESUME, (frozen, after)
    assert after["completed"] == frozen["completed"], (frozen, after)


def test_cancel_in_cluster_llmserver(e2e_stack: E2EStack) -> None:
    """集群内 LLMServer：冻住引擎核心后提交、取消；取消经 Serve 传到副本，vLLM 在引擎里中止。"""
    stack = e2e_stack
    replica = stack.llm_replica_pid()
    with frozen_descendants(replica):
        trace_ids = _submit_long(stack, stack.internal_url, 3)
        _wait_until(
            lambda: _log_shows(stack.llm_replica_log(replica), "Received request", trace_ids),
            "请求没有到达 LLMServer 里的 vLLM",
        )
        _cancel_all(stack, stack.internal_url, trace_ids)
        _wait_until(
            lambda: _log_shows(stack.llm_replica_log(replica), "aborted", trace_ids),
            "LLMServer 里的 vLLM 没有中止请求",
        )
    # 恢复后引擎照常工作：再提交一份短报告能生成完
    [trace_id] = _submit_long(stack, stack.internal_url, 1, length="short")
    assert _wait_callbacks(stack, {trace_id})[trace_id].body["status"] == "succeeded"


def test_engine_error_from_llmserver_fails_the_job_without_retry(e2e_stack: E2EStack) -> None:
    """提示词超出集群内引擎的上下文：vLLM 答错误体（4xx），LLM 副本把它转成 EngineFailure，
    作业以 llm_error 失败回调结束（不是可重试的错误，不会一直重试到超时）。"""
    stack = e2e_stack
    # 8000 字的数据 + long 篇幅（1536 个 token）超出 4096 的上下文
    sales_data = "".join(f"第{i}天销售额{i * 7 % 97}万元；" for i in range(700))[:8000]
    body = {
        "report_type": "sales_weekly",
        "inputs": {"period": "W47", "region": "华东", "sales_data": sales_data},
        "length": "long",
        "callback_url": stack.receiver.url,
    }
    response = httpx.post(stack.internal_url + "/v1/reports", json=body, timeout=30)
    assert response.status_code == 202, response.text
    trace_id = response.json()["trace_id"]
    callback = _wait_callbacks(stack, {trace_id})[trace_id].body
    assert callback["status"] == "failed", callback
    assert callback["error"]["code"] == "llm_error", callback["error"]
    assert "引擎错误 4" in callback["error"]["message"], callback["error"]


def test_deadline_aborts_generation_in_the_in_cluster_engine(e2e_stack: E2EStack) -> None:
    """集群内 LLMServer：冻住引擎核心，请求到了 vLLM 却生成不完；期限一到作业以 expired 结束，
    一次回调，vLLM 在引擎里中止（与取消同一条路）。"""
    stack = e2e_stack
    replica = stack.llm_replica_pid()
    with frozen_descendants(replica):
        trace_ids = _submit_long(stack, stack.internal_url, 2, deadline_s=20)
        _wait_until(
            lambda: _log_shows(stack.llm_replica_log(replica), "Received request", trace_ids),
            "请求没有到达 LLMServer 里的 vLLM",
        )
        callbacks = _wait_callbacks(stack, set(trace_ids))
        for trace_id in trace_ids:
            body = callbacks[trace_id].body
            assert body["status"] == "expired", body
            assert body["error"]["code"] == "deadline_exceeded", body
            status = wait_job_ended(stack.internal_url, trace_id, WAIT_S)
            assert status["status"] == "expired" and status["deadline_at"] is not None
        _wait_until(
            lambda: _log_shows(stack.llm_replica_log(replica), "aborted", trace_ids),
            "期限到了 LLMServer 里的 vLLM 没有中止请求",
        )
    received = [r.body["trace_id"] for r in stack.receiver.received]
    assert all(received.count(t) == 1 for t in trace_ids), "每个过期作业恰好一次回调"


def test_high_and_low_priority_reports_run_on_both_engine_modes(e2e_stack: E2EStack) -> None:
    """集群内引擎以 scheduling_policy: priority 启动，收 high（-1）与 low（1）；外部 vLLM 没开
    优先级调度，入口就不发（engine_priority 默认关），报告照常生成。"""
    stack = e2e_stack
    submitted: list[str] = []
    for base_url in (stack.internal_url, stack.external_url):
        for priority in ("high", "low"):
            submitted += _submit_long(stack, base_url, 1, length="short", priority=priority)
    callbacks = _wait_callbacks(stack, set(submitted))
    for trace_id in submitted:
        assert callbacks[trace_id].body["status"] == "succeeded", callbacks[trace_id].body
