"""500 个并发提交（回环、有界并发）：只有 202 或 429，每个 202 恰好一个终态回调。"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.fault.conftest import TALLY, FaultApp

SUBMISSIONS = 500
CONCURRENCY = 64


def test_500_concurrent_submissions_get_202_or_429(fault_app: FaultApp) -> None:
    app = fault_app
    body = app.body("[[sleep:0.5]]")

    async def fire() -> list[httpx.Response]:
        gate = asyncio.Semaphore(CONCURRENCY)
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:

            async def one() -> httpx.Response:
                async with gate:
                    return await client.post(app.base_url + "/v1/reports", json=body)

            return await asyncio.gather(*(one() for _ in range(SUBMISSIONS)))

    responses = asyncio.run(fire())
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {202, 429}, codes
    assert codes[202] and codes[429], f"限流没有生效：{codes}"
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["code"] == "overloaded"
    ids = [app.track(r.json()["trace_id"]) for r in responses if r.status_code == 202]
    TALLY.rejected_429 += codes[429]
    app.wait_delivered(ids, timeout_s=300)
    app.check_one_terminal_callback_each(ids, exactly_once=True)
