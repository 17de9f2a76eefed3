"""LLM 缩到零个副本时的就绪判断与冷启动等待（不依赖 Ray：读副本数、发第一个请求都由调用方注入）。

- 作业开始前看一眼副本数：有副本在跑直接生成；零个副本时，本进程里等着的作业共用一次冷启动等待
  （向 LLM 发一个健康检查：请求在路由器里排队，Serve 据此把副本从零扩起来）；
- 冷启动受 llm.cold_start_timeout_s 限制，不占生成的超时 llm.timeout_s；
- /readyz：有副本且健康检查通过为 warm，零个副本而部署能扩起来为 cold，其余 down。
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger

from serve_app.core.errors import LLMTimeout
from serve_app.core.metrics import ReportMetrics
from serve_app.core.settings import LLMCallPolicy
from serve_app.llm.port import EngineState, probe_ready

# 副本数快照的有效期：作业开始前看一眼“有没有副本在跑”，负载下每秒最多读一次部署状态
SNAPSHOT_MAX_AGE_S = 1.0
# 空闲时也按这个间隔刷新副本数（仪表 reports_llm_replicas 不因没人问而停在旧值）
REPLICA_POLL_S = 5.0
# 这些部署状态下零个副本也能接活：来了请求 Serve 会把它从零扩起来
SCALABLE_STATUSES = frozenset({"HEALTHY", "UPSCALING", "DOWNSCALING"})
# 入口发现副本死了（ActorDiedError）之后，控制器要过一阵才把它从 RUNNING 里去掉（实测约 8 s）：
# 这段时间内的失败与超时按“副本正在被换”处理，等控制器记下再重发
LOSS_GRACE_S = 30.0
LOSS_POLL_S = 0.5


@dataclass(frozen=True)
class ReplicaSnapshot:
    """LLM 部署此刻的状态与副本数。"""

    status: str  # Serve 的 DeploymentStatus（HEALTHY、UPSCALING、UNHEALTHY…）；部署不存在为 MISSING
    running: int
    starting: int


class ColdStartGate:
    """一个入口副本对 LLM 部署的看法：副本数、就绪状态、冷启动等待。"""

    def __init__(
        self,
        policy: LLMCallPolicy,
        metrics: ReportMetrics,
        *,
        read_replicas: Callable[[], Awaitable[ReplicaSnapshot]],
        first_answer: Callable[[], Awaitable[object]],
        what: str = "LLMServer",
    ) -> None:
        self._policy = policy
        self._metrics = metrics
        self._read_replicas = read_replicas
        self._first_answer = first_answer
        self._what = what
        self._snapshot: ReplicaSnapshot | None = None
        self._snapshot_at = float("-inf")
        self._snapshot_lock = asyncio.Lock()
        self._warming: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lost_at = float("-inf")
        # 最近一次读到“没有运行中的副本”的时刻（定时刷新每 REPLICA_POLL_S 秒读一次）
        self._zero_seen_at = float("-inf")

    def start(self) -> None:
        """启动副本数的定时刷新（须在事件循环内调用；重复调用无副作用）。"""
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_loop(), name="llm-replicas")

    async def _watch_loop(self) -> None:
        while True:
            await self.replicas(max_age_s=0)
            await asyncio.sleep(REPLICA_POLL_S)

    async def replicas(self, max_age_s: float = SNAPSHOT_MAX_AGE_S) -> ReplicaSnapshot | None:
        """副本数快照（过期才重读，同一时刻只读一次）；读不到返回 None（只记告警）。"""
        loop = asyncio.get_running_loop()
        if loop.time() - self._snapshot_at <= max_age_s:
            return self._snapshot
        async with self._snapshot_lock:
            if loop.time() - self._snapshot_at <= max_age_s:
                return self._snapshot
            try:
                async with asyncio.timeout(self._policy.ready_timeout_s):
                    snapshot = await self._read_replicas()
            except Exception as exc:  # noqa: BLE001 - 读不到状态不是作业的错：按有副本处理
                logger.warning("读取 {} 副本数失败：{!r}", self._what, exc)
                return None
            self._snapshot, self._snapshot_at = snapshot, loop.time()
            if snapshot.running == 0:
                self._zero_seen_at = self._snapshot_at
        self._metrics.llm_replicas.set(snapshot.running, {"kind": "running"})
        self._metrics.llm_replicas.set(snapshot.starting, {"kind": "starting"})
        return snapshot

    async def state(self) -> EngineState:
        """有副本在跑（或读不到副本数）：健康检查通过为 warm；零个副本而部署能扩起来为 cold。"""
        snapshot = await self.replicas()
        if snapshot is None or snapshot.running > 0:
            healthy = await probe_ready(
                self._first_answer, self._policy.ready_timeout_s, self._what
            )
            return EngineState.WARM if healthy else EngineState.DOWN
        if snapshot.status in SCALABLE_STATUSES:
            return EngineState.COLD
        logger.warning("{} 没有运行中的副本，部署状态 {}", self._what, snapshot.status)
        return EngineState.DOWN

    async def wait_warm(self) -> None:
        """有副本在跑就立即返回；否则与本副本里其他等着的作业共用一次冷启动等待。"""
        snapshot = await self.replicas()
        if snapshot is None or snapshot.running > 0:
            return
        if self._warming is None or self._warming.done():
            self._warming = asyncio.create_task(self._cold_start(), name="llm-cold-start")
            # 等的作业全被取消时也取走结果，免得“异常没人取”的告警
            self._warming.add_done_callback(_consume)
        logger.info(
            "{} 没有运行中的副本（{}）：等它冷启动，最多 {:g}s",
            self._what,
            snapshot.status,
            self._policy.cold_start_timeout_s,
        )
        # shield：一个作业被取消（或到期）不打断其他作业共用的等待
        await asyncio.shield(self._warming)

    def note_replica_lost(self) -> None:
        """一次生成撞上了死掉的副本（调用方从 Ray 的异常知道）：LOSS_GRACE_S 内的失败都等副本。"""
        self._lost_at = asyncio.get_running_loop().time()

    async def wait_replaced(self) -> bool:
        """生成失败或超时之后：副本没了、Serve 正在补（或刚补上），返回 True（没了就先等新副本）；
        失败与副本无关返回 False，照原样处理。三种情形算“副本换过”：

        - 刚见过副本死（note_replica_lost）：控制器可能还把它算作 RUNNING，先等它记下（运行数为 0 或
          开始补副本，最多 LOSS_GRACE_S），再看要不要等新副本；
        - 此刻没有运行中的副本：等新副本（与冷启动共用一次等待，受 llm.cold_start_timeout_s 限制）；
        - 此刻有副本，但这次尝试期间（最近 timeout_s 内）读到过零个：新副本恰在超时前后加载好
          （真实引擎重新加载约一分钟，与 llm.timeout_s 相当），立即重发。
        副本数现读，不用旧快照。
        """
        loop = asyncio.get_running_loop()
        snapshot = await self.replicas(max_age_s=0)
        if loop.time() - self._lost_at <= LOSS_GRACE_S:
            deadline = self._lost_at + LOSS_GRACE_S
            while (
                snapshot is not None
                and snapshot.running > 0
                and snapshot.starting == 0
                and loop.time() < deadline
            ):
                await asyncio.sleep(LOSS_POLL_S)
                # 等着的作业共用一次读（过期才重读）
                snapshot = await self.replicas(max_age_s=LOSS_POLL_S / 2)
        elif snapshot is None:
            return False
        elif snapshot.running > 0:
            return loop.time() - self._zero_seen_at <= self._policy.timeout_s + REPLICA_POLL_S
        if snapshot is not None and snapshot.running == 0:
            await self.wait_warm()
        return True

    async def _cold_start(self) -> None:
        started = time.monotonic()
        limit = self._policy.cold_start_timeout_s
        try:
            async with asyncio.timeout(limit):
                await self._first_answer()
        except TimeoutError as exc:
            self._metrics.llm_cold_starts.inc(tags={"outcome": "timeout"})
            logger.error("{} 冷启动超过 {:g}s 仍没有可用副本", self._what, limit)
            raise LLMTimeout(
                f"LLM 冷启动超过 {limit:g} 秒仍没有可用副本（llm.cold_start_timeout_s）"
            ) from exc
        elapsed = time.monotonic() - started
        self._metrics.llm_cold_starts.inc(tags={"outcome": "ready"})
        self._metrics.llm_cold_start_seconds.observe(elapsed)
        self._snapshot_at = float("-inf")  # 下一个作业重读副本数
        logger.info("{} 冷启动完成：等了 {:.1f}s", self._what, elapsed)

    async def aclose(self) -> None:
        """停掉副本数刷新与冷启动等待。"""
        tasks = [t for t in (self._watch, self._warming) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
