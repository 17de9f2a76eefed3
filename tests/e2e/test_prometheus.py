"""metrics 测试：在真实 Prometheus 上核对业务与引擎指标、仪表盘查询、告警规则与一个作业的整条日志。

与 e2e 层共用集群与引擎（见 conftest）；文件名排在 test_real_engine 之前，先于其余 e2e 测试运行。
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import local_prometheus
from serve_app.core.settings import PROJECT_ROOT
from tests.e2e.conftest import (
    INTERNAL_APP,
    METRICS_APP,
    METRICS_MAX_ACTIVE,
    E2EStack,
    MetricsStack,
)
from tests.support.process_freeze import frozen_descendants

pytestmark = pytest.mark.metrics

WAIT_S = 120
SCOPE = f'application="{METRICS_APP}"'
DASHBOARD = PROJECT_ROOT / "cluster" / "grafana" / "dashboards" / "reports.json"
RULES_DIR = PROJECT_ROOT / "cluster" / "prometheus"


def _wait[T](check: Callable[[], T], what: str, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{timeout_s:g}s 内{what}（最后一次：{last!r}）")
        time.sleep(1)
        last = check()
    return last


def _submit(stack: MetricsStack, report_type: str, inputs: dict[str, Any]) -> httpx.Response:
    body = {"report_type": report_type, "inputs": inputs, "callback_url": stack.receiver.url}
    return httpx.post(stack.app_url + "/v1/reports", json=body, timeout=30)


SALES = {"period": "W47", "region": "华东", "sales_data": "320 万"}


def _accepted(stack: MetricsStack, report_type: str, inputs: dict[str, Any]) -> str:
    response = _submit(stack, report_type, inputs)
    assert response.status_code == 202, response.text
    trace_id: str = response.json()["trace_id"]
    return trace_id


def _status(stack: MetricsStack, trace_id: str) -> str:
    response = httpx.get(f"{stack.app_url}/v1/reports/{trace_id}", timeout=30)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def _all_ended(stack: MetricsStack, trace_ids: dict[str, str]) -> bool:
    """都到了终态（回调送达也已记进账本，不再占名额）。"""
    return all(
        _status(stack, t) in {"succeeded", "failed", "cancelled", "expired"} for t in trace_ids
    )


@pytest.fixture(scope="module")
def driven(metrics_stack: MetricsStack) -> dict[str, str]:
    """驱动 7 个作业（5 个成功、1 个渲染失败、1 个取消）与 1 个 429；返回 trace_id → 预期终态。"""
    stack = metrics_stack
    expected: dict[str, str] = {}
    # 名额是 3：先 3 个（含渲染失败的），收齐后再 1 个
    for _ in range(2):
        expected[_accepted(stack, "sales_weekly", SALES)] = "succeeded"
    expected[_accepted(stack, "fragile", {"topic": "boom"})] = "failed"
    _wait(lambda: _all_ended(stack, expected), "前 3 个作业没有都结束")
    expected[_accepted(stack, "sales_weekly", SALES)] = "succeeded"
    _wait(lambda: _all_ended(stack, expected), "第 4 个作业没有结束")
    # 冻住引擎：3 个作业都停在 generating，占满名额；第 4 个 429；取消其中一个
    with frozen_descendants(stack.engine_pid):
        held = [_accepted(stack, "sales_weekly", SALES) for _ in range(METRICS_MAX_ACTIVE)]
        _wait(
            lambda: all(_status(stack, t) == "generating" for t in held),
            "冻住引擎后 3 个作业没有都进入 generating",
        )
        refused = _submit(stack, "sales_weekly", SALES)
        assert refused.status_code == 429, refused.text
        cancel = httpx.delete(f"{stack.app_url}/v1/reports/{held[0]}", timeout=30)
        assert cancel.status_code == 202, cancel.text
    expected[held[0]] = "cancelled"
    expected |= dict.fromkeys(held[1:], "succeeded")
    _wait(lambda: len(stack.receiver.delivered()) >= len(expected), "7 个回调没有收齐")
    delivered = stack.receiver.delivered()
    assert {t: delivered[t].body["status"] for t in expected} == expected
    return expected


def _sum(metric: str, selector: str = "") -> str:
    labels = ", ".join(filter(None, [SCOPE, selector]))
    return f"sum({metric}{{{labels}}})"


def _eventually_equal(stack: MetricsStack, promql: str, expected: float) -> None:
    _wait(lambda: stack.value(promql) == expected, f" {promql} 没有变成 {expected:g}")


def test_job_counts_and_histograms_are_exact(
    metrics_stack: MetricsStack,
    driven: dict[str, str],  # noqa: ARG001 - 先驱动作业
) -> None:
    stack = metrics_stack
    checks = {
        _sum("ray_reports_accepted_total", 'report_type="sales_weekly"'): 6,
        _sum("ray_reports_accepted_total", 'report_type="fragile"'): 1,
        _sum("ray_reports_rejected_total", 'reason="429"'): 1,
        _sum("ray_reports_rejected_total"): 1,
        _sum("ray_reports_finished_total", 'status="succeeded"'): 5,
        _sum("ray_reports_finished_total", 'status="failed", error_code="render_error"'): 1,
        _sum("ray_reports_finished_total", 'status="cancelled"'): 1,
        _sum("ray_reports_accept_to_callback_seconds_count"): 7,
        _sum("ray_reports_stage_seconds_count", 'stage="queue_wait"'): 7,
        _sum("ray_reports_stage_seconds_count", 'stage="render"'): 7,
        # 渲染失败的那个没有生成；取消的那个生成到一半被中止（也计时）
        _sum("ray_reports_stage_seconds_count", 'stage="generate"'): 6,
        _sum("ray_reports_stage_seconds_count", 'stage="deliver"'): 7,
        _sum("ray_reports_callback_attempts_total", 'outcome="delivered"'): 7,
        _sum("ray_reports_callback_attempts_total"): 7,
        # 7 个受理 + 1 个被账本按名额拒绝（429 也是一次成功的账本操作）
        _sum("ray_reports_ledger_op_seconds_count", 'op="admit", outcome="ok"'): 8,
    }
    for promql, expected in checks.items():
        _eventually_equal(stack, promql, expected)
    tokens = _sum("ray_reports_tokens_total", 'kind="completion"')
    _wait(lambda: (stack.value(tokens) or 0) > 0, f" {tokens} 没有大于 0")
    assert stack.value(_sum("ray_reports_ledger_op_seconds_count", 'outcome="error"')) in (None, 0)


def test_gauges_return_to_zero(
    metrics_stack: MetricsStack,
    driven: dict[str, str],  # noqa: ARG001 - 先驱动作业
) -> None:
    for gauge in (
        "ray_reports_jobs_active",
        "ray_reports_redeliveries_pending",
        "ray_reports_jobs_undelivered",
    ):
        _eventually_equal(metrics_stack, f"max({gauge}{{{SCOPE}}})", 0)


@pytest.fixture(scope="module")
def internal_job(e2e_stack: E2EStack) -> str:
    """集群内 LLMServer 的应用上一份报告（引擎指标与整条日志来自它）；返回其 trace_id。"""
    body = {
        "report_type": "sales_weekly",
        "inputs": SALES,
        "length": "short",
        "callback_url": e2e_stack.receiver.url,
    }
    response = httpx.post(e2e_stack.internal_url + "/v1/reports", json=body, timeout=30)
    assert response.status_code == 202, response.text
    trace_id: str = response.json()["trace_id"]
    callback = _wait(
        lambda: e2e_stack.receiver.delivered().get(trace_id), f"{trace_id} 没有收到回调", 300
    )
    assert callback is not None and callback.body["status"] == "succeeded", callback
    return trace_id


def test_engine_metrics_are_scraped_beside_ours(
    metrics_stack: MetricsStack,
    driven: dict[str, str],  # noqa: ARG001 - 先驱动作业
    internal_job: str,  # noqa: ARG001 - 集群内引擎先生成过
) -> None:
    stack = metrics_stack

    def engine_names() -> list[str]:
        body = httpx.get(f"{stack.prometheus_url}/api/v1/label/__name__/values", timeout=10)
        names = [n for n in body.json()["data"] if n.startswith("ray_vllm_")]
        return names if "ray_vllm_num_requests_running" in names else []

    _wait(engine_names, "Prometheus 里没有 ray_vllm_*（含 ray_vllm_num_requests_running）")

    def generated() -> bool:
        # 作业刚结束：引擎的计数要经 Ray 导出（每秒）与 Prometheus 抓取（每秒）才看得到
        value = stack.value("sum(ray_vllm_generation_tokens_total)")
        return value is not None and value > 0

    _wait(generated, "集群内引擎生成的 token 数没有出现在 Prometheus 里")

    def one_llm_replica() -> bool:
        # 集群内应用的入口每 5 秒从 Serve 读一次 LLMServer 的副本数（缩到零时为 0）
        query = f'max(ray_reports_llm_replicas{{application="{INTERNAL_APP}", kind="running"}})'
        return stack.value(query) == 1

    _wait(
        one_llm_replica, "入口导出的 LLM 副本数 ray_reports_llm_replicas 没有在 Prometheus 里是 1"
    )


def _panel_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 12
    return queries


def test_every_dashboard_panel_query_runs(
    metrics_stack: MetricsStack,
    driven: dict[str, str],  # noqa: ARG001 - 先驱动作业
) -> None:
    """Grafana 会代入的变量换成具体值后，每个面板查询在真实 Prometheus 上都能执行且有数据。"""
    # 空闲时本来就没有数据的：出错次数、从账本领取、LLM 排队、vLLM 在跑 / 等待的请求（引擎空闲时
    # 不再更新这两个仪表）、LLM 冷启动（本层的 LLM 不缩到零）：只要求能执行。
    # 其余面板在驱动过作业之后都应有数据——逐个等一会儿：
    # Ray 的指标端点偶尔有一次抓取缺了某个仪表（Prometheus 随即把它标为过时），下一次抓取就回来
    idle = ('outcome="error"', "recovered", "LLMServer", "ray_vllm_num_requests_", "cold_start")
    for expr in _panel_queries():
        concrete = expr.replace("$application", ".*").replace("$__rate_interval", "5m")
        if any(mark in concrete for mark in idle):
            metrics_stack.query(concrete)
        else:
            _wait(partial(metrics_stack.query, concrete), f"面板查询没有数据：{concrete}", 30)


def test_alert_rules_load_and_evaluate_on_the_real_prometheus(
    metrics_stack: MetricsStack,
    driven: dict[str, str],  # noqa: ARG001 - 先驱动作业
) -> None:
    stack = metrics_stack

    def rules() -> list[dict[str, Any]]:
        body = httpx.get(f"{stack.prometheus_url}/api/v1/rules", timeout=10).json()
        found: list[dict[str, Any]] = [r for g in body["data"]["groups"] for r in g["rules"]]
        return (
            found
            if found and all(r.get("lastEvaluation", "").startswith("2") for r in found)
            else []
        )

    loaded = _wait(rules, "告警规则没有加载或还没有评估")
    assert {r["name"] for r in loaded} >= {
        "ReportsUndelivered",
        "ReportsCallbackFailureRatioHigh",
        "ReportsLLMQueueAboveTarget",
        "ReportsAcceptToCallbackP99High",
        "ReportsLedgerUnavailable",
    }
    assert all(r["health"] == "ok" for r in loaded), [
        (r["name"], r.get("lastError")) for r in loaded
    ]
    # 一切正常：没有告警在响
    assert all(r["state"] == "inactive" for r in loaded), [(r["name"], r["state"]) for r in loaded]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """在规则目录里跑一次 promtool。"""
    _, promtool = local_prometheus.binaries()
    return subprocess.run(
        [str(promtool), *args], cwd=RULES_DIR, capture_output=True, text=True, check=False
    )


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    check = _promtool("check", "rules", "alerts.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    unit = _promtool("test", "rules", "alerts.test.yml")
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


_ACTOR = re.compile(r"^:actor_name:(.+)$", re.M)


def _stage_of(path: Path, text: str) -> str | None:
    """日志文件属于哪一站：Serve 的副本日志按文件名，worker 的输出按其中的 actor 名。"""
    name = path.name
    for stage in ("ReportIngress", "TemplateRenderer", "CallbackSender", "Ledger", "LLMServer"):
        if name.startswith(f"replica_{INTERNAL_APP}_{stage}"):
            return stage
    if name.startswith("worker-"):
        actors = _ACTOR.findall(text)
        for stage in ("ReportIngress", "TemplateRenderer", "CallbackSender", "Ledger", "LLMServer"):
            # 如 ServeReplica:reports-e2e:LLMServer:report-llm
            if any(stage in actor.split(":") for actor in actors):
                return stage
    return None


def test_one_trace_id_is_found_in_every_stage_of_rays_logs(
    metrics_stack: MetricsStack, internal_job: str
) -> None:
    """Ray 的日志目录里按一个 trace_id 搜：每个副本（入口、渲染、LLM、回调、账本）都有它。

    HTTP 经 HAProxy 直接进入口副本（Serve 的吞吐模式，见 tests/support/cluster.py）：HAProxy 不记
    request id，入口副本的访问日志就是第一站。
    """
    trace_id = internal_job
    logs = metrics_stack.session_dir / "logs"

    def stages() -> set[str]:
        found: set[str] = set()
        for path in logs.rglob("*"):
            if not path.is_file() or path.suffix not in {".log", ".out", ".err"}:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if trace_id in text and (stage := _stage_of(path, text)) is not None:
                found.add(stage)
        return found

    want = {"ReportIngress", "TemplateRenderer", "LLMServer", "CallbackSender", "Ledger"}
    _wait(lambda: want <= stages() or None, f"trace_id {trace_id} 没有出现在每一站的日志里")
