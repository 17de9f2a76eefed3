"""副本内通往引擎的作业队列：优先级先行、调用方之间按权重轮转、排久了升级。

一个入口副本同时执行的作业数有上限（max_concurrent_per_replica），多出的在这里等。次序：
- 优先级：high 先于 normal 先于 low。引擎自己只在它的批里装不下时才按优先级排（实测
  vLLM 在批有空位时不改变次序），所以真正的排序要在它前面的这道队列里做；
- 公平：同一优先级里，有积压的调用方按权重轮转（加权轮转：轮到的调用方连放 weight 个，
  再换下一个）——一个调用方的 500 份积压不会让另一个调用方的一份排在它们后面；
- 不饿死：排队每满 aging_s 升一级（low 等 aging_s 后与 normal 同级，2×aging_s 后与 high 同级），
  同级里先比升级后的级别、再按轮转；
- fifo 模式（对照用）：先来先服务，不看优先级与调用方。
等待中的作业被取消（DELETE、期限到了）就离开队列，不占名额。
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from serve_app.models.reports import PRIORITY_RANK, Priority

QueueOrder = Literal["priority", "fifo"]


@dataclass
class _Waiter:
    rank: int
    caller: str
    enqueued_at: float
    seq: int
    granted: asyncio.Future[None] = field(repr=False)


@dataclass
class _CallerLane:
    waiters: deque[_Waiter] = field(default_factory=deque)
    credit: int = 0


class JobQueue:
    """有 slots 个名额的队列；`async with queue.slot(priority, caller)` 拿到名额才执行。"""

    def __init__(
        self,
        slots: int,
        *,
        order: QueueOrder = "priority",
        weights: Mapping[str, int] | None = None,
        aging_s: float = 60.0,
    ) -> None:
        self._free = slots
        self._order = order
        self._weights = dict(weights or {})
        self._aging_s = aging_s
        self._lanes: dict[str, _CallerLane] = {}
        # 轮转次序：有积压的调用方依次轮到
        self._rotation: deque[str] = deque()
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        """在队列里等名额的作业数。"""
        return sum(len(lane.waiters) for lane in self._lanes.values())

    def waiting_by_priority(self) -> dict[str, int]:
        """各优先级（按提交时的级别）排队的作业数。"""
        names = {rank: name for name, rank in PRIORITY_RANK.items()}
        counts = dict.fromkeys(PRIORITY_RANK, 0)
        for lane in self._lanes.values():
            for waiter in lane.waiters:
                counts[names[waiter.rank]] += 1
        return counts

    @asynccontextmanager
    async def slot(self, priority: Priority, caller: str) -> AsyncIterator[None]:
        """等到名额再进入；离开（含异常、取消）时交还名额。"""
        await self._acquire(priority, caller)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: Priority, caller: str) -> None:
        if self._free > 0 and not self._lanes:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            rank=PRIORITY_RANK[priority],
            caller=caller,
            enqueued_at=loop.time(),
            seq=next(self._seq),
            granted=loop.create_future(),
        )
        lane = self._lanes.setdefault(caller, _CallerLane())
        if not lane.waiters:
            self._rotation.append(caller)
        lane.waiters.append(waiter)
        self._grant()
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                # 名额已给到却被取消：还回去给下一个
                self._release()
            else:
                self._remove(waiter)
            raise

    def _release(self) -> None:
        self._free += 1
        self._grant()

    def _grant(self) -> None:
        while self._free > 0 and self._lanes:
            waiter = self._next()
            self._remove(waiter)
            self._free -= 1
            waiter.granted.set_result(None)

    def _remove(self, waiter: _Waiter) -> None:
        lane = self._lanes.get(waiter.caller)
        if lane is None:
            return
        try:
            lane.waiters.remove(waiter)
        except ValueError:
            return
        if not lane.waiters:
            del self._lanes[waiter.caller]
            self._rotation.remove(waiter.caller)

    def _effective_rank(self, waiter: _Waiter, now: float) -> int:
        """排久了升级：每满 aging_s 升一级，最高到 high。"""
        return max(0, waiter.rank - int((now - waiter.enqueued_at) // self._aging_s))

    def _next(self) -> _Waiter:
        """下一个放行的作业。"""
        if self._order == "fifo":
            return min(
                (w for lane in self._lanes.values() for w in lane.waiters), key=lambda w: w.seq
            )
        now = asyncio.get_running_loop().time()
        # 每个调用方最靠前的一个里，最高的有效级别
        best = {
            caller: min(self._effective_rank(w, now) for w in lane.waiters)
            for caller, lane in self._lanes.items()
        }
        top = min(best.values())
        # 轮转：从当前轮到的调用方起，找第一个在最高级别有作业的；它连放 weight 个再换下一个
        for _ in range(len(self._rotation)):
            caller = self._rotation[0]
            if best[caller] != top:
                self._rotation.rotate(-1)
                continue
            lane = self._lanes[caller]
            if lane.credit <= 0:
                lane.credit = self._weights.get(caller, 1)
            lane.credit -= 1
            if lane.credit == 0:
                self._rotation.rotate(-1)
            return min(
                (w for w in lane.waiters if self._effective_rank(w, now) == top),
                key=lambda w: w.seq,
            )
        raise AssertionError("队列非空却没有可放行的作业")
