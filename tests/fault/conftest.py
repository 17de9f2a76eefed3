"""故障层：真实 Serve 应用（假引擎）+ 127.0.0.1 上真实的 backend B；杀副本、停接收方、整体重启。

本层结束时打印一行汇总：受理、送达、失败回调、取消回调、丢失（必须为 0）。
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from serve_app.core.settings import PROJECT_ROOT
from tests.support.fault_app import LEASE_S, TERMINAL, FaultApp, running_fault_app

__all__ = ["LEASE_S", "TALLY", "TERMINAL", "FaultApp"]


@dataclass
class Tally:
    """整个故障层的作业结局汇总。"""

    accepted: int = 0
    rejected_429: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    soak_lines: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"故障层汇总: jobs accepted={self.accepted} delivered={self.outcomes['succeeded']}"
            f" failed-with-callback={self.outcomes['failed']}"
            f" cancelled-with-callback={self.outcomes['cancelled']}"
            f" expired-with-callback={self.outcomes['expired']} lost={self.outcomes['lost']}"
            f" (429 rejected={self.rejected_429})"
        )


TALLY = Tally()


@pytest.fixture(scope="package", params=["sqlite", "postgres"])
def fault_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultApp]:
    """本层按账本各跑一遍（SQLite 经 Ledger 部署；Postgres 由入口副本直连本层自己的服务器）。

    每种账本一个 Ray + 一个应用；kill 与重启的测试之后应用仍可用。
    """
    work = tmp_path_factory.mktemp(f"fault-{request.param}")
    with running_fault_app(work, request.param) as app:
        app.deploy()
        try:
            yield app
        finally:
            _tally(app)
            app.shutdown()


def _tally(app: FaultApp) -> None:
    """按 backend B 实际收下的回调给每个受理的作业记结局。"""
    TALLY.accepted += len(app.accepted)
    for trace_id in app.accepted:
        accepted = app.backend.accepted_for(trace_id)
        TALLY.outcomes[accepted[-1].body["status"] if accepted else "lost"] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """故障层结束后打印一行汇总（并存一份 JSON 供 CI 留档）。"""
    if TALLY.accepted:
        terminalreporter.write_line(TALLY.line())
        for line in TALLY.soak_lines:
            terminalreporter.write_line(line)
        out = PROJECT_ROOT / ".run" / "fault-tally.json"
        out.parent.mkdir(exist_ok=True)
        summary = {"accepted": TALLY.accepted, "rejected_429": TALLY.rejected_429, **TALLY.outcomes}
        out.write_text(json.dumps(summary), "utf-8")
