"""JobRunner：入口副本里执行作业的后台任务，持有账本租约。

- 新受理的作业由受理它的副本执行；每 heartbeat_s 为在途作业续租；
- 每 sweep_interval_s 领取租约过期的作业（副本崩溃、缩容、节点丢失、整体重启）与到期的重投；
- 排队：同时执行的作业数有上限，多出的在 JobQueue 里按优先级、调用方轮转等名额；
- 取消：本副本的作业立即取消生成任务（Serve 把取消传到 LLM 副本，vLLM 中止请求），
  其他副本的作业经续租回复得知；
- 期限：到 deadline_at 还没有结果的作业以 expired 结束——排队的不再开始，生成中的像取消一样
  在引擎里中止；已有结果的照常投递；
- 关闭：在 drain_timeout_s 内等在途作业结束，余下的交还租约，别的副本（或重启后）接手；
- 保留期：每 purge_interval_s 清除一小批超过 retention_days 的已结束作业（不在请求路径上）。
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import UTC, datetime

from loguru import logger

from serve_app.core.errors import LedgerOutdated, LedgerUnavailable
from serve_app.core.metrics import ReportMetrics
from serve_app.core.settings import JobPolicy
from serve_app.ledger.records import CallbackState, JobRecord, JobState, StateChange, WorkItem
from serve_app.ledger.store import JobStore
from serve_app.models.reports import CallbackPayload, ReportJob
from serve_app.services.job_queue import JobQueue
from serve_app.services.pipeline import (
    ReportPipeline,
    StageHook,
    StageInterrupted,
    StageNotes,
)
from serve_app.services.settlement import Settled, Settlement, Settler


def _seconds_left(job: ReportJob) -> float | None:
    """距期限还有几秒（已过为 0：排队的立即结束）；没有期限为 None。"""
    if job.deadline_at is None:
        return None
    return max((job.deadline_at - datetime.now(UTC)).total_seconds(), 0.0)


def _claim_kind(item: WorkItem) -> str:
    """领取的是什么：produce 租约过期后重新执行；redeliver 到期的重投；deliver 接手没投完的回调。"""
    if item.produce:
        return "produce"
    return "redeliver" if item.record.callback.next_attempt_at is not None else "deliver"


class JobRunner:
    """一个入口副本的作业执行器；owner 是本副本在账本里的身份。"""

    def __init__(
        self,
        store: JobStore,
        pipeline: ReportPipeline,
        policy: JobPolicy,
        owner: str,
        metrics: ReportMetrics | None = None,
        settler: Settler | None = None,
    ) -> None:
        """settler：谁给作业收尾（记结果、投递、记投递）；默认本副本就地做（SQLite 账本时入口交给
        Ledger 副本，见 services/settlement.py）。"""
        self._store = store
        self._metrics = metrics or ReportMetrics()
        self._pipeline = pipeline
        self._settlement = Settlement(store, pipeline.deliver)
        self._settler: Settler = settler or self._settlement
        self._policy = policy
        self.owner = owner
        self._queue = JobQueue(
            policy.max_concurrent_per_replica,
            order=policy.queue_order,
            weights=policy.caller_weights,
            aging_s=policy.priority_aging_s,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._production: dict[str, asyncio.Task[CallbackPayload]] = {}
        self._lost: set[str] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._draining = False

    # ---- 生命周期 ----

    def start(self) -> None:
        """启动续租与扫描循环（需在事件循环内调用；重复调用无副作用）。"""
        if self._loops or self._draining:
            return
        self._loops = [
            asyncio.create_task(self._heartbeat_loop(), name="jobs-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="jobs-sweep"),
        ]

    async def drain(self, timeout_s: float | None = None) -> None:
        """停止领取新作业，等在途作业结束；超时的取消并交还租约。"""
        self._draining = True
        for loop in self._loops:
            loop.cancel()
        timeout = self._policy.drain_timeout_s if timeout_s is None else timeout_s
        pending = set(self._tasks.values())
        if pending:
            logger.info("副本关闭：等待 {} 个在途作业（最多 {:g}s）", len(pending), timeout)
            _, pending = await asyncio.wait(pending, timeout=timeout)
        leftover = [t.get_name() for t in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, *self._loops, return_exceptions=True)
        if leftover:
            logger.warning("副本关闭：{} 个作业未完成，交还租约由其他副本接手", len(leftover))
            try:
                async with asyncio.timeout(5):
                    await self._store.release(self.owner, leftover)
            except Exception:  # noqa: BLE001 - 交还失败也无妨：租约到期后同样会被接手
                logger.exception("交还租约失败，等租约到期后由其他副本接手")

    def wake(self) -> None:
        """立即扫描一次（如刚登记了重投）。"""
        self._wake.set()

    # ---- 作业 ----

    @property
    def running(self) -> int:
        """本副本在途的作业数。"""
        return len(self._tasks)

    def submit(self, record: JobRecord, *, produce: bool = True) -> None:
        """在后台执行作业（本副本已持有其租约）。"""
        self.start()
        trace_id = record.trace_id
        if trace_id in self._tasks:
            return
        task = asyncio.create_task(self._execute(record, produce), name=trace_id)
        self._tasks[trace_id] = task
        task.add_done_callback(lambda _: self._forget(trace_id))

    def _forget(self, trace_id: str) -> None:
        self._tasks.pop(trace_id, None)
        self._lost.discard(trace_id)

    def cancel_local(self, trace_id: str) -> bool:
        """作业在本副本排队或生成：让它离开队列或中止生成（随后投递 cancelled 回调）。"""
        production = self._production.get(trace_id)
        if production is None:
            return False
        production.cancel()
        return True

    async def _execute(self, record: JobRecord, produce: bool) -> None:
        job = record.job
        with logger.contextualize(trace_id=job.trace_id):
            try:
                if produce:
                    after = await self._produce_and_settle(record)
                elif record.outcome is not None:
                    logger.info(
                        "恢复执行：投递 {} 回调（第 {} 次执行）", record.outcome.status, record.runs
                    )
                    after = await self._settlement.deliver(job, self.owner, record.outcome)
                else:
                    return
                self._log_delivery(after)
                self._observe_delivery(after)
            except asyncio.CancelledError:
                if job.trace_id in self._lost:
                    logger.warning("作业租约已归其他副本，本副本停止执行")
                    return
                raise
            except Exception:  # noqa: BLE001 - 账本暂不可用等：租约到期后由扫描接手
                logger.exception("作业执行中断，租约到期后由其他副本接手")

    @staticmethod
    def _log_delivery(record: JobRecord | None) -> None:
        if record is None:
            return
        callback = record.callback
        if callback.state is CallbackState.UNDELIVERED:
            logger.error(
                "【回调放弃】累计尝试 {} 次仍未送达（最后状态 {}，{}）：见 /v1/ops/undelivered，"
                "可 POST /v1/reports/{}/redeliver",
                callback.attempts,
                callback.last_status_code,
                callback.last_error,
                record.trace_id,
            )
        elif callback.state is CallbackState.PENDING:
            logger.info("回调将于 {} 重投", callback.next_attempt_at)

    def _observe_delivery(self, record: JobRecord | None) -> None:
        """送达时记下受理 → 回调送达的时间。"""
        if record is None or record.callback.delivered_at is None:
            return
        if record.callback.state is not CallbackState.DELIVERED:
            return
        elapsed = (record.callback.delivered_at - record.job.created_at).total_seconds()
        self._metrics.accept_to_callback_seconds.observe(
            max(elapsed, 0.0), {"status": str(record.state)}
        )

    def _observe_finished(self, job: ReportJob, payload: CallbackPayload) -> None:
        error_code = str(payload.error.code) if payload.error is not None else ""
        self._metrics.finished.inc(
            tags={
                "report_type": job.report_type,
                "status": payload.status,
                "error_code": error_code,
                "priority": job.priority,
            }
        )

    async def _produce_and_settle(self, record: JobRecord) -> JobRecord | None:
        """生成结果后收尾（记结果、投递、记投递）；返回记下投递后的作业，租约已丢返回 None。

        收尾交给 Ledger 副本时本任务等它做完：作业一直在 _tasks 里，续租照常。"""
        job = record.job
        produced = await self._produce(job)
        if produced is None:
            return None
        payload, passed = produced
        if record.runs > 1:
            logger.info("恢复执行：投递 {} 回调（第 {} 次执行）", payload.status, record.runs)
        settled = await self._finish_and_deliver(job, payload, passed)
        if settled is None:
            logger.warning("记录结果时租约已归其他副本，放弃本次结果")
            return None
        self._observe_finished(job, settled.final)
        return settled.after

    async def _finish_and_deliver(
        self, job: ReportJob, payload: CallbackPayload, passed: tuple[StateChange, ...]
    ) -> Settled | None:
        if self._settler.worthwhile():
            try:
                return await self._settler.finish_and_deliver(job, self.owner, payload, passed)
            except LedgerOutdated as exc:
                # 滚动升级窗口里的旧 Ledger 副本：它什么都没做，这一份就地收尾
                logger.warning("Ledger 副本还不能收尾（{}）：这一份由入口投递", exc)
        return await self._settlement.finish_and_deliver(job, self.owner, payload, passed)

    async def _produce(
        self, job: ReportJob
    ) -> tuple[CallbackPayload, tuple[StateChange, ...]] | None:
        """生成结果（或期限到了的 expired）与途经还没写下的阶段；租约已丢返回 None。"""
        deadline = asyncio.timeout(_seconds_left(job))
        notes = StageNotes(self._stage_writer(job))
        try:
            async with deadline:
                payload = await self._queued_production(job, notes)
        except TimeoutError:
            if not deadline.expired():
                raise  # 不是期限到了（别处的超时）：照原样交给 _execute
            logger.warning("作业到期限 {} 仍没有结果：以 expired 结束", job.deadline_at)
            payload = CallbackPayload.expired(job)
        if payload is None:
            return None
        # 很快做完、没有单独写下的渲染与生成随结果一起记进历史（取消、到期的也记：做到了哪一步）
        return payload, tuple(notes.passed)

    async def _queued_production(self, job: ReportJob, notes: StageNotes) -> CallbackPayload | None:
        """排队拿到名额后生成；期限到了由外层的 timeout 取消（生成任务随之取消，引擎中止）。

        排队与生成是同一个登记在 _production 的任务：取消（DELETE、续租回复）在排队时就让作业
        离开队列、立即以 cancelled 收尾，不必等到名额再在第一次推进阶段时发现。"""
        task = asyncio.create_task(self._slotted_production(job, notes))
        self._production[job.trace_id] = task
        try:
            return await task
        except StageInterrupted as exc:
            if exc.reason == "lost":
                logger.warning("作业租约已归其他副本，本副本停止执行")
                return None
            return CallbackPayload.cancelled(job)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if job.trace_id in self._lost or (current is not None and current.cancelling()):
                raise
            logger.info("作业已取消：排队中的离开队列，生成中的已中止")
            return CallbackPayload.cancelled(job)
        finally:
            self._production.pop(job.trace_id, None)

    async def _slotted_production(self, job: ReportJob, notes: StageNotes) -> CallbackPayload:
        async with self._queue.slot(job.priority, job.caller):
            # queue_wait 由流水线在开始渲染前记下（含 LLM 冷启动的等待）
            return await self._pipeline.produce(job, notes)

    def _stage_writer(self, job: ReportJob) -> StageHook:
        async def on_stage(state: JobState, passed: tuple[StateChange, ...]) -> None:
            try:
                result = await self._store.advance(job.trace_id, self.owner, state, passed)
            except LedgerUnavailable:
                raise
            except Exception as exc:
                # 记不下阶段不是作业的错（如升级窗口里旧的 Ledger 副本不认新参数）：不出 failed
                # 结果，照账本不可用处理，租约到期后重跑
                raise LedgerUnavailable(f"记录阶段 {state} 失败：{exc!r}") from exc
            if result != "ok":
                raise StageInterrupted(result)
            logger.debug("进入阶段 {}", state)

        return on_stage

    # ---- 后台循环 ----

    async def _heartbeat_loop(self) -> None:
        """每 heartbeat_s 发一次续租，不等上一次的回复。

        顺序续租时两次续租到达账本的间隔是 heartbeat_s 加一个往返：账本或本副本一忙、往返一长，
        租约就在持有者还活着时过期，作业被别的副本再执行、回调送两次。按节拍发出，续租照样按节拍
        到达账本。在途的最多 lease_s / heartbeat_s 个：再多也赶不上租约，只会压垮正慢着的账本。"""
        limit = max(1, math.ceil(self._policy.lease_s / self._policy.heartbeat_s))
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(self._policy.heartbeat_s)
                if len(pending) >= limit:
                    continue
                renewal = asyncio.create_task(self._renew(), name="jobs-renew")
                pending.add(renewal)
                renewal.add_done_callback(pending.discard)
        finally:
            for renewal in pending:
                renewal.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _renew(self) -> None:
        """续租一次；回复里有取消的就中止生成，租约已归别人的就停下。"""
        try:
            reply = await self._store.heartbeat(self.owner, list(self._tasks))
        except Exception:  # noqa: BLE001 - 下一拍再试；租约比续租间隔长得多
            logger.exception("续租失败")
            return
        for trace_id in reply.cancel:
            with logger.contextualize(trace_id=trace_id):
                if self.cancel_local(trace_id):
                    logger.info("收到取消请求：离开队列或中止生成")
        for trace_id in reply.lost:
            task = self._tasks.get(trace_id)
            if task is not None:
                self._lost.add(trace_id)
                task.cancel()

    async def _sweep_loop(self) -> None:
        next_purge = asyncio.get_running_loop().time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._policy.sweep_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.sweep_once()
            except Exception:  # noqa: BLE001 - 下一轮再试
                logger.exception("扫描账本失败")
            await self.refresh_gauges()
            if asyncio.get_running_loop().time() >= next_purge:
                # 删满一批说明还有：下一轮扫描接着删；否则等一个清除间隔
                full = await self.purge_once() >= self._policy.purge_batch
                next_purge = asyncio.get_running_loop().time() + (
                    0 if full else self._policy.purge_interval_s
                )

    async def refresh_gauges(self) -> None:
        """从账本读总数，更新活跃 / 待重投 / 未送达三个仪表（失败只记日志）。"""
        try:
            counts = await self._store.counts()
        except Exception:  # noqa: BLE001 - 仪表晚一轮更新无妨
            logger.exception("读取账本总数失败")
            return
        self._metrics.jobs_active.set(counts.active)
        self._metrics.redeliveries_pending.set(counts.pending_redeliveries)
        self._metrics.jobs_undelivered.set(counts.undelivered)

    async def purge_once(self) -> int:
        """清除一小批超过保留期的已结束作业；失败只记日志（下一次再试）。"""
        try:
            deleted = await self._store.purge_finished(self._policy.purge_batch)
        except Exception:  # noqa: BLE001 - 清除不影响作业执行
            logger.exception("清除过期作业失败")
            return 0
        if deleted:
            logger.info("清除了 {} 个超过保留期的已结束作业", deleted)
        return deleted

    async def sweep_once(self) -> int:
        """领取一批到期的工作并在后台执行；返回领取的个数。"""
        capacity = self._policy.max_concurrent_per_replica - len(self._tasks)
        if self._draining or capacity <= 0:
            return 0
        items = await self._store.claim_due(self.owner, capacity)
        for item in items:
            with logger.contextualize(trace_id=item.record.trace_id):
                logger.info(
                    "从账本领取：state={} produce={} runs={}",
                    item.record.state,
                    item.produce,
                    item.record.runs,
                )
            self._metrics.recovered.inc(tags={"kind": _claim_kind(item)})
            self.submit(item.record, produce=item.produce)
        return len(items)
