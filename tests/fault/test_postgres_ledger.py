"""Postgres 账本特有的故障（只在 Postgres 一侧运行）：数据库重启；两个入口副本直连同一个库，
抢同一个过期的租约（SQLite 账本只有一个 Ledger 副本写库，没有这种竞争）；入口副本扩缩。"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from tests.fault.conftest import LEASE_S, FaultApp
from tests.support.waiting import wait_until


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


def test_two_ingress_replicas_race_for_one_expired_lease(fault_app: FaultApp) -> None:
    """持有租约的入口副本被冻住（SIGSTOP，像一次长 GC 停顿或虚机被挂起）：租约过期，另一个副本
    领取、重做并投递；解冻后输家手里的生成结果与投递都被租约挡住——恰好一个结果、一次回调。"""
    app = fault_app
    if app.postgres is None:
        pytest.skip("只在 Postgres 账本上运行（入口副本直连数据库，才有两个副本抢租约）")
    app.deploy(ingress_replicas=2)
    try:
        ingress_pids = app.replica_pids("ReportIngress")
        assert len(ingress_pids) == 2, ingress_pids
        # 生成 2 秒：冻住期间引擎把结果交回，结果停在输家进程里，解冻后它会拿着结果去记
        [trace_id] = app.submit_generating(f"[[sleep:{LEASE_S - 1:g}]]", 1)
        holder = app.lease_owner(trace_id)
        assert holder is not None
        loser = int(holder.split(":")[1])
        # 只冻本应用的入口副本（owner 里的 PID 须是其中之一）
        assert loser in ingress_pids, (holder, ingress_pids)
        os.kill(loser, signal.SIGSTOP)
        try:
            # 冻住期间续租停了：租约过期后另一个副本领取（库里的持有者换人）。只等到领取为止：
            # 调用方被冻住时，被调的 LLM 副本交不回结果，整个副本跟着停顿
            # （见 docs/design.md“已知限制”）。
            # 冻住的时间远短于 Serve 的健康检查时限（30 秒），输家不会被替换掉
            def taken_over() -> str | None:
                owner = app.lease_owner(trace_id)
                return owner if owner not in (None, holder) else None

            winner = wait_until(
                taken_over, what=f" {trace_id} 的租约被另一个副本领取", timeout_s=20
            )
        finally:
            os.kill(loser, signal.SIGCONT)
        assert int(winner.split(":")[1]) in ingress_pids - {loser}

        def loser_fenced() -> bool:
            # 输家解冻后：续租得知租约已归别人，或拿着结果去记时被条件写挡下
            return any(
                r["extra"].get("trace_id") == trace_id
                and r["process"]["id"] == loser
                and "租约已归其他副本" in r["message"]
                for r in app.json_logs()
            )

        wait_until(loser_fenced, what=" 输家发现租约已丢", timeout_s=30)
        app.wait_delivered([trace_id], timeout_s=30)
        app.check_one_terminal_callback_each([trace_id], exactly_once=True)
        body = app.status(trace_id)
        assert body["status"] == "succeeded"
        states = [h["state"] for h in body["history"]]
        # 两个副本各渲染一次（接手后重做），结果只有一个
        assert states.count("rendering") == 2 and states.count("succeeded") == 1, states
    finally:
        app.deploy()


def test_ingress_autoscales_up_under_a_burst_and_back_down(fault_app: FaultApp) -> None:
    """入口副本各自直连数据库时按在途请求扩缩：突发下扩到 2 个，过后缩回 1 个；被缩掉的副本排空、
    交还租约，另一个接手——每个作业恰好一次成功回调（SQLite 账本的同一场景在集群层
    test_multinode）。"""
    app = fault_app
    if app.postgres is None:
        pytest.skip("只在 Postgres 账本上运行（SQLite 账本一侧在集群层的多节点测试里）")
    app.deploy(
        ingress_autoscaling={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 2,
            # 指标每 0.5 秒报一次、按最近 2 秒平均（默认 10 秒、30 秒），测试里一上一下来得快
            "metrics_interval_s": 0.5,
            "look_back_period_s": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 5,
        }
    )
    try:
        trace_ids = [app.submit("[[sleep:2]]") for _ in range(6)]

        async def hammer(seconds: float) -> None:
            # 一直保持 16 个在途的状态查询：入口的在途请求远高于目标 2
            async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as client:
                deadline = asyncio.get_running_loop().time() + seconds

                async def worker() -> None:
                    while asyncio.get_running_loop().time() < deadline:
                        await client.get(f"/v1/reports/{trace_ids[0]}")

                await asyncio.gather(*(worker() for _ in range(16)))

        def two_running() -> bool:
            # 一直压到第二个副本真的就绪，其间陆续交新作业（落在两个副本上）
            asyncio.run(hammer(2))
            trace_ids.append(app.submit("[[sleep:2]]"))
            return app.running_replicas("ReportIngress") == 2

        wait_until(two_running, what=" 入口扩到 2 个副本并就绪", timeout_s=180)
        # 突发过后：缩回 1 个；缩掉的副本手里还有生成中的作业
        trace_ids += [app.submit("[[sleep:2]]") for _ in range(4)]
        wait_until(
            lambda: app.running_replicas("ReportIngress") == 1,
            what=" 入口缩回 1 个副本",
            timeout_s=180,
        )
        app.wait_delivered(trace_ids, timeout_s=180)
        app.check_one_terminal_callback_each(trace_ids, exactly_once=True)
    finally:
        app.deploy()
