"""入口合并回调调用：同一接收方同一轮结束的作业一次 CallbackSender.send_many，各作业拿回自己的结果。

只把同一调用方、同一 origin 的回调合进一批：一批要等批里最慢的投递才一起返回，挂起的接收方
不能拖住别的接收方的投递记账。真实 Ray Serve 上的回调由集成、e2e 与故障层证明
（每个作业都经这条路）。
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from ray.serve.handle import DeploymentHandle

from deployments.callback import CallbackSender
from deployments.handles import stages
from deployments.handles.stages import HandleDeliveryStage
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob, utc_now
from tests.support.sample import failed_payload, make_settings


class _SendMany:
    """假句柄的 send_many：记下每批的 (url, trace_id)；含挂起作业的批在 release 之前不答。"""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.hanging: set[str] = set()
        self.release = asyncio.Event()

    async def remote(self, requests: list[tuple[str, CallbackPayload]]) -> list[tuple[bool, Any]]:
        self.batches.append([(url, payload.trace_id) for url, payload in requests])
        await asyncio.sleep(0.01)  # 一次往返：这期间结束的作业排进下一批
        if any(payload.trace_id in self.hanging for _, payload in requests):
            await self.release.wait()
        return [
            (True, DeliveryOutcome(delivered=True, attempts=1, error=payload.trace_id))
            for _, payload in requests
        ]


class _Handle:
    def __init__(self) -> None:
        self.send_many = _SendMany()


def _job(index: int, url: str = "http://127.0.0.1:9/hooks", caller: str = "b") -> ReportJob:
    return ReportJob(
        trace_id=f"trace-{index}",
        report_type="sales_weekly",
        inputs={},
        length="short",
        callback_url=url,
        created_at=utc_now(),
        caller=caller,
    )


@pytest.fixture
def stage() -> tuple[HandleDeliveryStage, _SendMany]:
    handle = _Handle()
    return HandleDeliveryStage(cast(DeploymentHandle[Any], handle)), handle.send_many


async def _send(stage: HandleDeliveryStage, job: ReportJob) -> DeliveryOutcome:
    return await stage.send(job, failed_payload(job.trace_id))


async def test_callbacks_to_one_receiver_share_one_handle_call(
    stage: tuple[HandleDeliveryStage, _SendMany],
) -> None:
    delivery, method = stage
    jobs = [_job(i, f"http://127.0.0.1:9/hooks/{i}") for i in range(30)]
    outcomes = await asyncio.gather(*(_send(delivery, job) for job in jobs))
    # 同一调用方、同一 origin（路径不同也算同一接收方）：一次句柄调用，各自拿回自己的结果
    assert [len(batch) for batch in method.batches] == [30]
    assert [o.error for o in outcomes] == [job.trace_id for job in jobs]


async def test_receivers_and_callers_are_batched_apart(
    stage: tuple[HandleDeliveryStage, _SendMany],
) -> None:
    delivery, method = stage
    jobs = [
        _job(0, "http://127.0.0.1:9/a"),
        _job(1, "http://127.0.0.1:9/b"),
        _job(2, "http://127.0.0.1:10/a"),
        _job(3, "http://127.0.0.1:9/a", caller="other"),
        _job(4, "HTTP://127.0.0.1:9/c"),
    ]
    await asyncio.gather(*(_send(delivery, job) for job in jobs))
    batches = sorted(sorted(trace for _, trace in batch) for batch in method.batches)
    assert batches == [["trace-0", "trace-1", "trace-4"], ["trace-2"], ["trace-3"]]


async def test_a_hanging_receiver_does_not_hold_other_receivers_results(
    stage: tuple[HandleDeliveryStage, _SendMany],
) -> None:
    delivery, method = stage
    method.hanging.update({"trace-0", "trace-3"})
    stuck = asyncio.ensure_future(_send(delivery, _job(0, "http://127.0.0.1:9/hooks")))
    other_caller = _send(delivery, _job(1, "http://127.0.0.1:9/hooks", caller="other-b"))
    other_host = _send(delivery, _job(2, "http://127.0.0.1:10/hooks"))
    async with asyncio.timeout(2):
        done = await asyncio.gather(other_caller, other_host)
    assert [o.error for o in done] == ["trace-1", "trace-2"] and not stuck.done()
    # 挂起那一批在途时，同一接收方新结束的作业照样立即发出（不限在途批次，不为合批多等）
    later = asyncio.ensure_future(_send(delivery, _job(3, "http://127.0.0.1:9/hooks")))
    await asyncio.sleep(0.005)
    assert [trace for _, trace in method.batches[-1]] == ["trace-3"]
    method.release.set()
    assert (await stuck).error == "trace-0" and (await later).error == "trace-3"


async def test_idle_receivers_are_forgotten(
    stage: tuple[HandleDeliveryStage, _SendMany], monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery, _ = stage
    monkeypatch.setattr(stages, "_RECEIVER_BATCHERS_PRUNE_AT", 8)
    for port in range(20):
        await _send(delivery, _job(port, f"http://127.0.0.1:{port + 1}/hooks"))
    # 满 8 个时回收没有在途批次的：字典不随接收方的个数无限增长
    assert len(delivery.batchers) <= 8


async def test_send_many_returns_each_delivery_its_own_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender = CallbackSender(make_settings())

    async def send(url: str, payload: CallbackPayload) -> DeliveryOutcome:
        await asyncio.sleep(0.01 if url.endswith("slow") else 0)
        if url.endswith("broken"):
            raise RuntimeError(f"{payload.trace_id} 坏了")
        return DeliveryOutcome(delivered=True, attempts=1, error=payload.trace_id)

    monkeypatch.setattr(sender, "send", send)
    results = await sender.send_many(
        [
            ("http://127.0.0.1:9/slow", failed_payload("t-0")),
            ("http://127.0.0.1:9/broken", failed_payload("t-1")),
            ("http://127.0.0.1:9/ok", failed_payload("t-2")),
        ]
    )
    # 按请求的顺序（不是完成的顺序）；一个投递出错只落在它自己身上
    assert [ok for ok, _ in results] == [True, False, True]
    assert results[0][1].error == "t-0" and results[2][1].error == "t-2"
    assert isinstance(results[1][1], RuntimeError) and "t-1" in str(results[1][1])
    await sender.__del__()
