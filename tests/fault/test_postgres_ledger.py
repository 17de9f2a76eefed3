"""Postgres 账本特有的故障：数据库重启（SQLite 账本没有独立的服务器，只在 Postgres 一侧运行）。"""

from __future__ import annotations

import httpx
import pytest

from tests.fault.conftest import FaultApp


def test_postgres_restarted_mid_run(fault_app: FaultApp) -> None:
    app = fault_app
    if app.postgres is None:
        pytest.skip("只在 Postgres 账本上运行（SQLite 账本没有可重启的服务器）")
    running = app.submit_generating("[[sleep:3]]", 4)
    app.postgres.stop()
    try:
        # 账本不可用：不受理（作业没写下就不能答 202），503 + Retry-After
        response = httpx.post(app.base_url + "/v1/reports", json=app.body(), timeout=60)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "ledger_unavailable"
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        app.postgres.start()
    # 停机时在生成的作业：记不上结果的，租约到期后由扫描接手重做；恢复后新交的照常
    after = [app.submit() for _ in range(3)]
    ids = running + after
    app.wait_delivered(ids, timeout_s=180)
    app.check_one_terminal_callback_each(ids, exactly_once=False)
    for trace_id in ids:
        assert app.status(trace_id)["status"] == "succeeded"
