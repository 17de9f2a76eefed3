"""整个 Serve 应用：受理 → 渲染 → 假引擎 → 真实回调接收方。"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from benchmarks.overhead import server_timing
from tests.integration.conftest import CALLBACK_ATTEMPTS, LLM_ATTEMPTS, ItApp
from tests.support.cluster import free_port, read_json_logs
from tests.support.local_http import wait_job_ended
from tests.support.receiver import CallbackReceiver, ReceivedCallback
from tests.support.sample import sales_request
from tests.support.waiting import wait_until

WAIT_S = 60.0


def _submit(app: ItApp, body: dict[str, Any]) -> str:
    response = httpx.post(app.base_url + "/v1/reports", json=body, timeout=30)
    assert response.status_code == 202, response.text
    trace_id: str = response.json()["trace_id"]
    assert response.headers["x-trace-id"] == trace_id
    return trace_id


def _callback_for(app: ItApp, trace_id: str, timeout_s: float = WAIT_S) -> ReceivedCallback:
    return wait_until(
        lambda: next(iter(_callbacks_for(app, trace_id)), None),
        what=f" {trace_id} 的回调",
        timeout_s=timeout_s,
    )


def _callbacks_for(app: ItApp, trace_id: str) -> list[ReceivedCallback]:
    return [r for r in app.receiver.received if r.body.get("trace_id") == trace_id]


def test_report_is_delivered_with_trace_id_across_handles(it_app: ItApp) -> None:
    trace_id = _submit(it_app, sales_request(it_app.receiver.url))
    callback = _callback_for(it_app, trace_id)
    body = callback.body
    assert callback.headers["x-trace-id"] == trace_id
    assert body["status"] == "succeeded" and body["error"] is None
    # 假引擎回显 request_id：trace_id 经句柄传到了 LLM 阶段；short 预设 32
    assert body["report"]["content"] == f"request_id={trace_id} max_tokens=32"
    assert body["report"]["usage"] == {"prompt_tokens": 11, "completion_tokens": 7}
    assert body["report"]["model"] == "report-llm"
    assert body["metadata"] == {"order": 42, "tags": ["周报"]}
    assert body["report_type"] == "sales_weekly"


def _status(app: ItApp, trace_id: str) -> str:
    response = httpx.get(f"{app.base_url}/v1/reports/{trace_id}", timeout=30)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def test_a_slow_receiver_does_not_hold_other_receivers_bookkeeping(it_app: ItApp) -> None:
    """回调按接收方合批（真实 Serve、真实接收方）：同时结束的作业里，慢接收方（每次答复前等 4 秒）
    那一批还在途时，别的接收方的作业已在账本里结束——不和慢的合成一批、等它一起返回。"""
    with CallbackReceiver() as slow:
        slow.script(delay_s=4.0)
        bodies = [sales_request(slow.url) for _ in range(6)]
        bodies += [sales_request(it_app.receiver.url) for _ in range(6)]
        with ThreadPoolExecutor(len(bodies)) as pool:
            ids = list(pool.map(lambda body: _submit(it_app, body), bodies))
        slow_ids, fast_ids = ids[:6], ids[6:]
        for trace_id in fast_ids:
            assert wait_job_ended(it_app.base_url, trace_id, WAIT_S)["status"] == "succeeded"
        # 快接收方的作业都结束时，慢接收方的一个都还没结束（还在等它答复）
        assert "succeeded" not in {_status(it_app, trace_id) for trace_id in slow_ids}
        for trace_id in slow_ids:
            assert wait_job_ended(it_app.base_url, trace_id, WAIT_S)["status"] == "succeeded"
    assert len(slow.delivered()) == 6


def test_202_server_timing_reaches_the_caller_through_serve(it_app: ItApp) -> None:
    """Serve 的入口（吞吐模式 + HAProxy）不吞 Server-Timing：调用方能据此分出应用之外排的队。"""
    response = httpx.post(
        it_app.base_url + "/v1/reports", json=sales_request(it_app.receiver.url), timeout=30
    )
    assert response.status_code == 202, response.text
    timing = server_timing(response)
    assert set(timing) == {"app", "ledger"}
    # 写账本是真实的 Ledger 部署（SQLite、fsync）：花了时间，且在应用里的时间之内
    assert 0 < timing["ledger"] <= timing["app"]
    _callback_for(it_app, response.json()["trace_id"])


@pytest.mark.parametrize(
    ("directive", "code"),
    [
        ("[[error:400]]", "llm_error"),
        ("[[error:503]]", "llm_error"),
        ("[[sleep:10]]", "llm_timeout"),
    ],
)
def test_llm_failures_end_in_failed_callback(it_app: ItApp, directive: str, code: str) -> None:
    body = sales_request(it_app.receiver.url)
    body["inputs"]["sales_data"] = directive
    trace_id = _submit(it_app, body)
    callback = _callback_for(it_app, trace_id)
    assert callback.body["status"] == "failed" and callback.body["report"] is None
    assert callback.body["error"]["code"] == code
    assert callback.body["error"]["message"]
    time.sleep(0.5)
    assert len(_callbacks_for(it_app, trace_id)) == 1


def test_transient_engine_errors_are_retried(it_app: ItApp) -> None:
    body = sales_request(it_app.receiver.url)
    body["inputs"]["sales_data"] = "[[error:503]]"
    trace_id = _submit(it_app, body)
    _callback_for(it_app, trace_id)
    attempts = [
        r
        for r in read_json_logs(it_app.log_path)
        if r["extra"].get("trace_id") == trace_id and "LLM 调用第" in r["message"]
    ]
    assert len(attempts) == LLM_ATTEMPTS - 1


def test_render_failure_ends_in_failed_callback(it_app: ItApp) -> None:
    body = {
        "report_type": "fragile",
        "inputs": {"topic": "boom"},
        "callback_url": it_app.receiver.url,
    }
    trace_id = _submit(it_app, body)
    callback = _callback_for(it_app, trace_id)
    assert callback.body["error"]["code"] == "render_error"
    assert "not_declared" in callback.body["error"]["message"]


def test_invalid_request_is_refused_before_any_work(it_app: ItApp) -> None:
    before = len(it_app.receiver.received)
    response = httpx.post(
        it_app.base_url + "/v1/reports",
        json=sales_request(it_app.receiver.url, report_type="nope"),
        timeout=30,
    )
    assert response.status_code == 422
    assert "fragile" in response.json()["error"]["message"]
    time.sleep(0.5)
    assert len(it_app.receiver.received) == before


def test_every_log_line_of_a_job_carries_its_trace_id(it_app: ItApp) -> None:
    offset = it_app.log_path.stat().st_size if it_app.log_path.exists() else 0
    trace_id = _submit(it_app, sales_request(it_app.receiver.url))
    _callback_for(it_app, trace_id)
    time.sleep(1.0)
    records = list(read_json_logs(it_app.log_path, offset))
    ours = [r for r in records if r["extra"].get("trace_id") == trace_id]
    # 三个部署都写了这个作业的日志：入口、渲染、回调
    names = {r["name"] for r in ours}
    assert {"serve_app.services.pipeline", "deployments.render", "deployments.callback"} <= names
    # 这段时间里项目代码的每一行都带 trace_id（只有这一个作业在跑）
    untagged = [
        r["message"]
        for r in records
        if r["extra"].get("trace_id") in (None, "-")
        and r["name"].split(".")[0] in {"serve_app", "deployments"}
    ]
    assert untagged == []


def test_an_idle_ingress_leaves_the_ending_to_the_ledger_replica(it_app: ItApp) -> None:
    """SQLite 账本、入口闲着时作业的收尾在 Ledger 副本里：它记下结果、经 CallbackSender 投递、
    记下投递，写一行“结果与一轮回调投递”；入口没有经 apply 另记结果（没有“结果（进入投递）”）。
    回调从 CallbackSender 的进程发出，不是 Ledger 也不是入口。

    恰好碰上入口的续租、扫描在途时那一份就地收尾（负载下的做法，也是对的）：一份一份地交，
    直到有一份由 Ledger 收尾，最多五份。"""
    for _ in range(5):
        offset = it_app.log_path.stat().st_size if it_app.log_path.exists() else 0
        trace_id = _submit(it_app, sales_request(it_app.receiver.url))
        _callback_for(it_app, trace_id)

        def ours(trace_id: str = trace_id, offset: int = offset) -> list[dict[str, Any]]:
            return [
                r
                for r in read_json_logs(it_app.log_path, offset)
                if r["extra"].get("trace_id") == trace_id
            ]

        ending = wait_until(
            lambda: [
                r for r in ours() if "一轮回调投递" in r["message"] or "进入投递" in r["message"]
            ],
            what=" 收尾的账本日志",
            timeout_s=WAIT_S,
        )
        if "结果与一轮回调投递" not in ending[0]["message"]:
            continue  # 这一份碰上了入口的账本调用在途，就地收尾
        assert "delivered" in ending[0]["message"] and ending[0]["name"] == "deployments.ledger"
        records = ours()
        assert len([r for r in records if "一轮回调投递" in r["message"]]) == 1
        assert not [r for r in records if "结果（进入投递）" in r["message"]]
        process = {r["name"]: r["process"]["id"] for r in records}
        ledger, sender = process["deployments.ledger"], process["deployments.callback"]
        assert len({ledger, sender, process["serve_app.services.pipeline"]}) == 3, process
        return
    raise AssertionError("五份都由入口就地收尾：闲着的入口没有交给 Ledger 副本")


def test_unreachable_callback_waits_in_the_ledger_for_redelivery(it_app: ItApp) -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks"
    trace_id = _submit(it_app, sales_request(url))

    def attempted() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(
            f"{it_app.base_url}/v1/reports/{trace_id}", timeout=10
        ).json()
        return body if body["callback"]["attempts"] >= CALLBACK_ATTEMPTS else None

    status = wait_until(attempted, what="回调内联重试用尽", timeout_s=WAIT_S, interval_s=0.2)
    # 结果已记入账本，回调等待下一次重投（不会丢）
    assert status["status"] == "delivering" and status["report"] is not None
    callback = status["callback"]
    assert callback["state"] == "pending" and callback["next_attempt_at"]
    assert callback["last_error"].startswith("没有得到 HTTP 响应")
    warned = [
        r
        for r in read_json_logs(it_app.log_path)
        if r["extra"].get("trace_id") == trace_id and "本轮未送达" in r["message"]
    ]
    assert warned and warned[0]["level"]["name"] == "WARNING"


def test_concurrent_submissions_each_get_exactly_one_callback(it_app: ItApp) -> None:
    async def submit_all() -> list[str]:
        async with httpx.AsyncClient(base_url=it_app.base_url, timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/v1/reports", json=sales_request(it_app.receiver.url))
                    for _ in range(30)
                )
            )
        assert all(r.status_code == 202 for r in responses)
        return [r.json()["trace_id"] for r in responses]

    trace_ids = asyncio.run(submit_all())
    assert len(set(trace_ids)) == 30
    for trace_id in trace_ids:
        _callback_for(it_app, trace_id)
    time.sleep(0.5)
    for trace_id in trace_ids:
        assert len(_callbacks_for(it_app, trace_id)) == 1


def test_http_surface_through_serve(it_app: ItApp) -> None:
    assert httpx.get(it_app.base_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(it_app.base_url + "/readyz").status_code == 200
    types = httpx.get(it_app.base_url + "/v1/report-types").json()
    assert {t["name"] for t in types} == {"sales_weekly", "fragile"}


def test_a_deadline_during_generation_ends_expired_with_one_callback(it_app: ItApp) -> None:
    """真实 Ray：期限（1 秒）先于 LLM 超时（3 秒）到了，生成经句柄取消，作业以 expired 结束。"""
    body = sales_request(it_app.receiver.url, deadline_s=1, priority="low")
    body["inputs"]["sales_data"] = "[[sleep:10]]"
    trace_id = _submit(it_app, body)
    callback = _callback_for(it_app, trace_id)
    assert callback.body["status"] == "expired" and callback.body["report"] is None
    assert callback.body["error"]["code"] == "deadline_exceeded"
    status = wait_job_ended(it_app.base_url, trace_id, WAIT_S)
    assert status["status"] == "expired" and status["priority"] == "low"
    assert [h["state"] for h in status["history"]][-2:] == ["delivering", "expired"]
    time.sleep(0.5)
    assert len(_callbacks_for(it_app, trace_id)) == 1


def test_a_result_that_exists_is_delivered_after_its_deadline(it_app: ItApp) -> None:
    """结果已经有了，期限在投递途中（接收方慢）到了：照常以 succeeded 投递。"""
    it_app.receiver.script(delay_s=2.0)
    try:
        trace_id = _submit(it_app, sales_request(it_app.receiver.url, deadline_s=0.5))
        callback = _callback_for(it_app, trace_id)
    finally:
        it_app.receiver.script()
    assert callback.body["status"] == "succeeded"
    assert len(_callbacks_for(it_app, trace_id)) == 1
