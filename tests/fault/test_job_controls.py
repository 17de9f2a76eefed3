"""经真实 Serve 应用：幂等重放、键冲突 409、生成前与生成中取消（引擎里中止）、各状态、重投。"""

from __future__ import annotations

import httpx

from tests.fault.conftest import FaultApp
from tests.support.sample import SUCCEEDED_HISTORY
from tests.support.waiting import wait_until


def test_idempotent_replay_and_conflict(fault_app: FaultApp) -> None:
    app = fault_app
    url = app.base_url + "/v1/reports"
    key = {"Idempotency-Key": "order-7"}
    first = app.submit(**key)
    replay = httpx.post(url, json=app.body(), headers=key, timeout=30)
    assert replay.status_code == 202 and replay.json()["trace_id"] == first
    assert replay.headers["idempotent-replayed"] == "true"
    conflict = httpx.post(url, json=app.body(length="long"), headers=key, timeout=30)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    app.wait_delivered([first])
    app.check_one_terminal_callback_each([first], exactly_once=True)


def test_cancel_before_and_during_generation(fault_app: FaultApp) -> None:
    app = fault_app
    cancelled_before = app.engine_cancelled()
    # 占满本副本的 8 个执行位：第 9 个作业停在 accepted
    generating = app.submit_generating("[[sleep:60]]", 8)
    waiting = app.submit()
    assert app.status(waiting)["status"] == "accepted"
    ids = [waiting, *generating]
    for trace_id in ids:
        response = httpx.delete(f"{app.base_url}/v1/reports/{trace_id}", timeout=30)
        assert response.status_code == 202, response.text
        if trace_id == waiting:
            # 排队的作业离开队列就收尾，不等名额：占着名额的 8 个这时还要睡 60 秒
            app.wait_delivered([waiting], timeout_s=15)
    app.wait_delivered(ids, timeout_s=30)
    app.check_one_terminal_callback_each(ids, exactly_once=True)
    for trace_id in ids:
        [callback] = app.backend.accepted_for(trace_id)
        assert callback.body["status"] == "cancelled"
        assert callback.body["error"]["code"] == "cancelled"
    # 生成中的 8 个在引擎副本里被中止（不是等它睡完 60 秒）；取消异步传到副本，稍等片刻
    wait_until(
        lambda: app.engine_cancelled() - cancelled_before >= len(generating),
        what="取消传到引擎副本",
        timeout_s=15,
        interval_s=0.2,
    )
    assert app.engine_cancelled() - cancelled_before == len(generating)
    states = [h["state"] for h in app.status(waiting)["history"]]
    assert "generating" not in states and states[-1] == "cancelled"
    finished = httpx.delete(f"{app.base_url}/v1/reports/{waiting}", timeout=30)
    assert finished.status_code == 409
    assert httpx.delete(f"{app.base_url}/v1/reports/unknown", timeout=30).status_code == 404


def test_a_queued_job_past_its_deadline_never_starts_and_the_busy_ones_finish(
    fault_app: FaultApp,
) -> None:
    """真实 Serve 应用：8 个执行位被占满时排着的作业期限到了，不再开始（历史里没有 rendering），
    以 expired 结束、恰好一次回调；占着执行位的照常做完。"""
    app = fault_app
    app.only_on_one_ledger()
    generating = app.submit_generating("[[sleep:6]]", 8)
    response = httpx.post(
        app.base_url + "/v1/reports", json=app.body(deadline_s=2, priority="low"), timeout=30
    )
    assert response.status_code == 202, response.text
    waiting = app.track(response.json()["trace_id"])
    assert app.status(waiting)["status"] == "accepted"
    ids = [waiting, *generating]
    app.wait_delivered(ids, timeout_s=60)
    app.check_one_terminal_callback_each(ids, exactly_once=True)
    [callback] = app.backend.accepted_for(waiting)
    assert callback.body["status"] == "expired"
    assert callback.body["error"]["code"] == "deadline_exceeded"
    states = [h["state"] for h in app.status(waiting)["history"]]
    assert states == ["accepted", "delivering", "expired"], states
    for trace_id in generating:
        assert app.status(trace_id)["status"] == "succeeded"


def test_status_of_each_outcome_and_redeliver(fault_app: FaultApp) -> None:
    app = fault_app
    ok = app.submit()
    failed = app.submit("[[error:400]]")
    app.wait_delivered([ok, failed])
    body = app.status(ok)
    assert [h["state"] for h in body["history"]] == SUCCEEDED_HISTORY
    assert body["report"]["content"] and body["callback"]["delivered_at"]
    failed_body = app.status(failed)
    assert failed_body["status"] == "failed" and failed_body["error"]["code"] == "llm_error"
    assert httpx.get(f"{app.base_url}/v1/reports/unknown", timeout=30).status_code == 404
    # 运维重投：同一 webhook-id 再投一次
    response = httpx.post(f"{app.base_url}/v1/reports/{ok}/redeliver", timeout=30)
    assert response.status_code == 202
    app.wait_for(ok, lambda b: b["callback"]["attempts"] == 2, "重投送达")
    again = app.backend.accepted_for(ok)
    assert len(again) == 2 and again[0].raw == again[1].raw
    assert {r.headers["webhook-id"] for r in again} == {f"msg_{ok}"}
