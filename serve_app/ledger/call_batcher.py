"""把同一副本里并发的小调用合成一批（账本客户端合并句柄调用、Postgres 账本合并语句都用它）。

没有在途批次时，新调用在本轮事件循环结束时就发出（同一轮里产生的调用一并带上），单个调用
不多等；在途批次达到上限时，后来的调用排队，等一批返回后合成下一批。负载越高，一批越大，
每个作业分摊的句柄调用（以及账本端的事务提交）越少。
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# 一次调用：(方法名, 参数)；一个结果：(是否成功, 返回值或异常)
Call = tuple[str, tuple[Any, ...]]
Outcome = tuple[bool, Any]
SendBatch = Callable[[list[Call]], Awaitable[list[Outcome]]]


@dataclass
class _Lane:
    """一条发送道：排队的调用、在途的批次与上限。"""

    max_in_flight: int
    queue: list[tuple[Call, asyncio.Future[Any]]] = field(default_factory=list)
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    scheduled: bool = False


class CallBatcher:
    """合并并发调用；send 把一批调用一次发出，按顺序返回各自的结果。

    urgent 里的方法（受理：202 在等它）走自己的一条道，最多 urgent_in_flight 批在途：不排在后台
    作业的批次后面等在途名额。urgent_in_flight 为 0 时与其余调用同道。
    """

    def __init__(
        self,
        send: SendBatch,
        *,
        max_in_flight: int = 2,
        max_batch: int = 256,
        urgent: frozenset[str] = frozenset(),
        urgent_in_flight: int = 1,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._normal = _Lane(max_in_flight)
        self._urgent = _Lane(urgent_in_flight) if urgent and urgent_in_flight > 0 else None
        self._urgent_methods = urgent
        # 统计：发出的批次与调用（测试与基准读它）
        self.batches = 0
        self.calls = 0

    async def call(self, method: str, *args: Any) -> Any:
        """排入下一批并等它的结果（失败时抛出该调用自己的异常，或整批的异常）。"""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        lane = self._normal
        if self._urgent is not None and method in self._urgent_methods:
            lane = self._urgent
        lane.queue.append(((method, args), future))
        self._schedule(lane, loop)
        return await future

    def _schedule(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        if lane.scheduled or not lane.queue or len(lane.in_flight) >= lane.max_in_flight:
            return
        lane.scheduled = True
        loop.call_soon(self._launch, lane)

    def _launch(self, lane: _Lane) -> None:
        lane.scheduled = False
        while lane.queue and len(lane.in_flight) < lane.max_in_flight:
            # 调用方已放弃（取消）的不再发出
            live = [(c, f) for c, f in lane.queue[: self._max_batch] if not f.done()]
            del lane.queue[: self._max_batch]
            if not live:
                continue
            task = asyncio.create_task(self._send_batch(live), name="ledger-batch")
            lane.in_flight.add(task)
            task.add_done_callback(functools.partial(self._finished, lane))

    def _finished(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        lane.in_flight.discard(task)
        self._schedule(lane, asyncio.get_running_loop())

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
