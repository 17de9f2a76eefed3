"""JobQueue：优先级先行、调用方之间按权重轮转、排久了升级、取消即离队、fifo 对照。"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.models.reports import Priority
from serve_app.services.job_queue import JobQueue, QueueOrder


async def _order(
    jobs: list[tuple[Priority, str]],
    *,
    order: QueueOrder = "priority",
    weights: dict[str, int] | None = None,
    aging_s: float = 60.0,
) -> list[int]:
    """一个名额被占着时按次序排进 jobs，然后放开：返回各作业拿到名额的次序（jobs 的下标）。"""
    queue = JobQueue(1, order=order, weights=weights, aging_s=aging_s)
    served: list[int] = []
    gate = asyncio.Event()

    async def hold() -> None:
        async with queue.slot("normal", "holder"):
            await gate.wait()

    async def job(index: int, priority: Priority, caller: str) -> None:
        async with queue.slot(priority, caller):
            served.append(index)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    tasks = []
    for index, (priority, caller) in enumerate(jobs):
        tasks.append(asyncio.create_task(job(index, priority, caller)))
        await asyncio.sleep(0)
    assert queue.waiting == len(jobs)
    gate.set()
    await asyncio.gather(holder, *tasks)
    return served


async def test_high_goes_before_normal_before_low() -> None:
    jobs: list[tuple[Priority, str]] = [("low", "a"), ("normal", "a"), ("high", "a"), ("low", "a")]
    assert await _order(jobs) == [2, 1, 0, 3]


async def test_fifo_mode_ignores_priority_and_callers() -> None:
    jobs: list[tuple[Priority, str]] = [("low", "a"), ("high", "b"), ("normal", "a")]
    assert await _order(jobs, order="fifo") == [0, 1, 2]


async def test_one_callers_burst_does_not_hold_back_another_callers_single_job() -> None:
    burst: list[tuple[Priority, str]] = [("normal", "batch")] * 50
    served = await _order([*burst, ("normal", "manager")])
    # manager 的一份在第二个就轮到，而不是排在 50 份之后
    assert served.index(50) <= 1


async def test_weights_give_a_caller_that_many_turns_per_round() -> None:
    normal: Priority = "normal"
    jobs = [(normal, "a")] * 6 + [(normal, "b")] * 6
    served = await _order(jobs, weights={"a": 2})
    callers = ["a" if i < 6 else "b" for i in served]
    assert callers[:9] == ["a", "a", "b", "a", "a", "b", "a", "a", "b"]


async def test_a_low_job_that_waited_long_enough_is_promoted() -> None:
    queue = JobQueue(1, aging_s=0.05)
    served: list[str] = []
    gate = asyncio.Event()

    async def hold() -> None:
        async with queue.slot("normal", "x"):
            await gate.wait()

    async def job(name: str, priority: Priority) -> None:
        async with queue.slot(priority, name):
            served.append(name)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    old_low = asyncio.create_task(job("old-low", "low"))
    await asyncio.sleep(0.12)  # 等满两个 aging_s：low 升到 high 同级，且比后来的 high 先到
    fresh_high = asyncio.create_task(job("fresh-high", "high"))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(holder, old_low, fresh_high)
    assert served == ["old-low", "fresh-high"]


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    queue = JobQueue(1)
    gate = asyncio.Event()

    async def hold() -> None:
        async with queue.slot("normal", "a"):
            await gate.wait()

    async def job() -> None:
        async with queue.slot("high", "b"):
            pass

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(job())
    await asyncio.sleep(0)
    assert queue.waiting_by_priority() == {"high": 1, "normal": 0, "low": 0}
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queue.waiting == 0
    gate.set()
    await holder
    # 名额都还在：两个作业可以同时拿到一个名额里的一个
    async with asyncio.timeout(1):
        async with queue.slot("low", "c"):
            pass
