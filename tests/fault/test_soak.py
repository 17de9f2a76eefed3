"""短 soak（固定种子，约两分钟）：开环负载下故障随机叠加——杀各部署的副本、
backend B 拒绝 / 500 / 挂起、冻住一个入口副本过租约、重启 Postgres（Postgres 账本）或杀 Ledger
（SQLite 账本）、整个应用重启一次，负载里混着取消与期限；中途不停机轮换调用方的 API key
与回调签名密钥。一个作业都不能丢；最后一个故障结束后负载再跑 20 秒，这段里进账本的作业恰好一次回调。

长的版本是 `make soak`（benchmarks/soak.py，默认 30 分钟），同一段代码（tests/support/soak.py）。
"""

from __future__ import annotations

from loguru import logger

from tests.fault.conftest import TALLY, FaultApp
from tests.support.soak import Soak

SEED = 20261202


def test_short_chaos_soak_loses_nothing(fault_app: FaultApp) -> None:
    app = fault_app
    soak = Soak(app, seed=SEED, duration_s=100, rate_per_s=3, quiet_tail_s=20)
    try:
        report = soak.run(drain_timeout_s=240)
    finally:
        app.deploy()  # 还原成一个入口副本，后面的测试照旧
        for job in soak.jobs:
            app.track(job.trace_id)
    logger.info(report.line())
    for fault in report.faults:
        logger.info("soak 故障：{}", fault)
    TALLY.soak_lines.append(report.line())
    assert report.accepted > 200
    assert report.lost == 0, f"{report.line()}\n{soak.stories(report.lost_trace_ids)}"
    assert report.inconsistent == 0, report.line()
    # 最后一个故障结束后负载又跑了 20 秒（每秒 3 份）：恰好一次查到了足够多的作业，不是空查
    assert report.exactly_once_checked >= 30, report.line()
    assert report.exactly_once_violations == 0, (
        f"{report.line()}\n{soak.stories(report.violation_trace_ids)}"
    )
    # 中途不停机轮换了 API key 与签名密钥：没有一个合法请求被拒（401 会记进 refused_4xx），
    # 每个回调都带当时有效的签名，删掉旧密钥之后的回调都有新密钥的签名
    assert report.refused_4xx == 0 and report.gave_up == 0, report.line()
    assert report.signature_failures == 0, report.line()
    assert report.unsigned_by_new_after_drop == 0, report.line()
    # 时间表里的每种故障都真的做了（没有全被跳过）
    done = {f["kind"] for f in report.faults if f["skipped"] is None}
    expected = {f["kind"] for f in report.faults}
    assert done == expected, report.faults
    # 取消与期限在故障中照样生效
    assert report.outcomes.get("cancelled", 0) > 0 and report.outcomes.get("expired", 0) > 0
