"""backend B 长时间不可用（连接被拒 / 一直 500）之后恢复：每个作业送达一次，webhook-id 可去重。"""

from __future__ import annotations

import time

from tests.fault.conftest import FaultApp

JOBS = 5


def test_backend_refusing_connections_then_back(fault_app: FaultApp) -> None:
    app = fault_app
    app.only_on_one_ledger()
    app.backend.stop()
    ids = [app.submit() for _ in range(JOBS)]
    for trace_id in ids:
        # 内联重试（2 次）用尽后，作业在账本里等下一次重投，且持久化重投也失败过一轮
        body = app.wait_for(
            trace_id, lambda b: b["callback"]["attempts"] >= 3, "持久化重投失败一轮"
        )
        assert body["status"] == "delivering" and body["callback"]["state"] == "pending"
        assert body["callback"]["last_error"].startswith("没有得到 HTTP 响应")
        assert body["callback"]["next_attempt_at"] and body["report"] is not None
    app.backend.start()
    app.wait_delivered(ids)
    app.check_one_terminal_callback_each(ids, exactly_once=True)
    for trace_id in ids:
        assert app.status(trace_id)["status"] == "succeeded"


def test_backend_answering_500_then_200(fault_app: FaultApp) -> None:
    app = fault_app
    app.only_on_one_ledger()
    app.backend.receiver.script(default_status=500)
    ids = [app.submit() for _ in range(JOBS)]
    for trace_id in ids:
        app.wait_for(trace_id, lambda b: b["callback"]["attempts"] >= 3, "三次 500")
        assert app.status(trace_id)["callback"]["last_status_code"] == 500
    time.sleep(1)
    app.backend.receiver.script(default_status=200)
    app.wait_delivered(ids)
    app.check_one_terminal_callback_each(ids, exactly_once=True)
    for trace_id in ids:
        # 每次尝试（含被 500 拒的）都带同一个 webhook-id
        seen = [r for r in app.backend.received() if r.body.get("trace_id") == trace_id]
        assert len(seen) >= 4 and {r.headers["webhook-id"] for r in seen} == {f"msg_{trace_id}"}
        assert app.status(trace_id)["callback"]["attempts"] == len(seen)
