"""CallBatcher：并发调用合成少数几批；各自的结果与异常回到各自的调用方；取消的不发出。"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.ledger.call_batcher import Call, CallBatcher, Outcome


class _Remote:
    """记下每一批；"fail" 方法返回该调用自己的异常。"""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.batches: list[list[Call]] = []
        self.delay_s = delay_s
        self.broken = False

    async def send(self, calls: list[Call]) -> list[Outcome]:
        self.batches.append(calls)
        await asyncio.sleep(self.delay_s)
        if self.broken:
            raise ConnectionError("整批失败")
        return [
            (False, ValueError(args[0])) if method == "fail" else (True, (method, *args))
            for method, args in calls
        ]


async def test_a_lone_call_goes_out_at_once() -> None:
    remote = _Remote()
    batcher = CallBatcher(remote.send)
    assert await batcher.call("get", "t-1") == ("get", "t-1")
    assert remote.batches == [[("get", ("t-1",))]]


async def test_concurrent_calls_share_few_batches_in_order() -> None:
    remote = _Remote()
    batcher = CallBatcher(remote.send, max_in_flight=2)
    results = await asyncio.gather(*(batcher.call("advance", i) for i in range(100)))
    assert results == [("advance", i) for i in range(100)]
    assert len(remote.batches) <= 3
    assert [args[0] for batch in remote.batches for _, args in batch] == list(range(100))


async def test_each_caller_gets_its_own_error_and_whole_batch_errors_reach_all() -> None:
    remote = _Remote()
    batcher = CallBatcher(remote.send)
    results: tuple[Any, ...] = await asyncio.gather(
        batcher.call("get", 1), batcher.call("fail", "坏"), return_exceptions=True
    )
    assert results[0] == ("get", 1) and isinstance(results[1], ValueError)
    remote.broken = True
    results = await asyncio.gather(
        batcher.call("get", 1), batcher.call("get", 2), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_batches_are_capped_and_in_flight_is_bounded() -> None:
    remote = _Remote(delay_s=0.05)
    batcher = CallBatcher(remote.send, max_in_flight=1, max_batch=10)
    await asyncio.gather(*(batcher.call("get", i) for i in range(35)))
    assert [len(b) for b in remote.batches] == [10, 10, 10, 5]


async def test_a_cancelled_caller_is_not_sent() -> None:
    remote = _Remote(delay_s=0.05)
    batcher = CallBatcher(remote.send, max_in_flight=1)
    first = asyncio.create_task(batcher.call("get", 1))
    await asyncio.sleep(0.01)  # 第一批已在途
    dropped = asyncio.create_task(batcher.call("get", 2))
    kept = asyncio.create_task(batcher.call("get", 3))
    await asyncio.sleep(0)
    dropped.cancel()
    assert await first == ("get", 1) and await kept == ("get", 3)
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert remote.batches == [[("get", (1,))], [("get", (3,))]]
