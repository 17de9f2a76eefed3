"""把同一副本里并发的小调用合成一批：账本客户端与渲染阶段合并句柄调用，Postgres 账本合并语句。

没有在途批次时，新调用在本轮事件循环结束时就发出（同一轮里产生的调用一并带上），单个调用
不多等；在途批次达到上限时，后来的调用排队，等一批返回后合成下一批。负载越高，一批越大，
每个作业分摊的句柄调用（以及账本端的事务提交）越少。
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

# 一次调用：(方法名, 参数)；一个结果：(是否成功, 返回值或异常)
Call = tuple[str, tuple[Any, ...]]
Outcome = tuple[bool, Any]
SendBatch = Callable[[list[Call]], Awaitable[list[Outcome]]]


def as_outcomes(results: list[Any]) -> list[Outcome]:
    """gather(return_exceptions=True) 的结果 → 各调用的 (成功, 返回值) 或 (失败, 异常)。

    批的接收端（Ledger 的 apply 与 settle_many）用。"""
    return [(False, r) if isinstance(r, BaseException) else (True, r) for r in results]


class CallBatcher:
    """合并并发调用；send 把一批调用一次发出，按顺序返回各自的结果。"""

    def __init__(self, send: SendBatch, *, max_in_flight: int = 2, max_batch: int = 256) -> None:
        self._send = send
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._queue: list[tuple[Call, asyncio.Future[Any]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scheduled = False
        # 统计：发出的批次与调用（测试与基准读它）
        self.batches = 0
        self.calls = 0

    @property
    def idle(self) -> bool:
        """没有排队、也没有在途的批次（按键分设合批器的调用方据此回收不用的）。"""
        return not self._queue and not self._in_flight and not self._scheduled

    async def call(self, method: str, *args: Any) -> Any:
        """排入下一批并等它的结果（失败时抛出该调用自己的异常，或整批的异常）。"""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(((method, args), future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._scheduled or not self._queue or len(self._in_flight) >= self._max_in_flight:
            return
        self._scheduled = True
        loop.call_soon(self._launch)

    def _launch(self) -> None:
        self._scheduled = False
        while self._queue and len(self._in_flight) < self._max_in_flight:
            # 调用方已放弃（取消）的不再发出
            live = [(c, f) for c, f in self._queue[: self._max_batch] if not f.done()]
            del self._queue[: self._max_batch]
            if not live:
                continue
            task = asyncio.create_task(self._send_batch(live), name="ledger-batch")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._schedule(asyncio.get_running_loop())

    async def _send_batch(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            outcomes = await self._send([call for call, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - 整批失败：每个调用方都收到这个异常
            outcomes = [(False, exc)] * len(batch)
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
