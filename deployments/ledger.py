"""Ledger 部署：单副本持有 SQLite 账本；各节点上的入口副本经句柄（LedgerClient）访问。

设了 jobs.ledger_url（Postgres）时入口副本直连数据库，不经这里；部署仍然存在（serve_config 里的
Ledger 一节两种账本通用），它只连同一个库、健康检查反映数据库是否可用。
"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger
from ray import serve
from ray.serve.deployment import Deployment

from serve_app.core.logging import configure_logging
from serve_app.core.settings import Settings
from serve_app.ledger.postgres_store import PostgresJobStore
from serve_app.ledger.records import Admission, CancelResult, JobRecord, JobState, WorkItem
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.ledger.store import (
    AdvanceResult,
    HeartbeatReply,
    IdempotencyKey,
    JobStore,
    LedgerCounts,
)
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob

# 可经 apply 合并的方法：每个作业路径上的调用，都可安全重放（按 trace_id 与租约判定）
BATCHABLE = frozenset({"admit", "get", "advance", "finish", "record_delivery"})
# 每个作业在账本副本里留一行日志的操作
_LOGGED = {"finish": "结果（进入投递）", "record_delivery": "一轮回调投递"}


class Ledger:
    """JobStore 的远程端点：持有一个存储，只公开下面列出的方法（见 serve_app/ledger/store.py）。"""

    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_json_path)
        # 连接在第一次调用时打开（Serve 同步调用构造函数）；结构版本不对时健康检查即失败
        self._store: JobStore
        if settings.jobs.ledger_url is not None:
            self._store = PostgresJobStore(
                settings.jobs.ledger_url.get_secret_value(), settings.jobs, pool_size=1
            )
            logger.info("作业账本在 Postgres：入口副本直连，本部署只做健康检查")
        else:
            self._store = SqliteJobStore(settings.resolved_ledger_path, settings.jobs)
            logger.info("作业账本：{}", settings.resolved_ledger_path)

    async def apply(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
        """一批作业路径上的调用（LedgerClient 合并而来）：并发执行，存储把它们组提交成一个事务。

        按顺序返回 (成功, 返回值) 或 (失败, 异常)；只接受 BATCHABLE 里的方法。
        """
        for method, _ in calls:
            if method not in BATCHABLE:
                raise ValueError(f"Ledger.apply 不接受 {method!r}：只接受 {sorted(BATCHABLE)}")
        results = await asyncio.gather(
            *(getattr(self._store, method)(*args) for method, args in calls),
            return_exceptions=True,
        )
        for (method, args), result in zip(calls, results, strict=True):
            if method in _LOGGED and result is not None and not isinstance(result, BaseException):
                # 结果与投递各记一行（带 trace_id）：日志搜索里看得到账本这一站
                with logger.contextualize(trace_id=args[0]):
                    logger.info("账本已记录：{}", _LOGGED[method])
        return [(False, r) if isinstance(r, BaseException) else (True, r) for r in results]

    async def admit(
        self, job: ReportJob, owner: str, idempotency: IdempotencyKey | None
    ) -> Admission:
        """见 JobStore.admit。"""
        return await self._store.admit(job, owner, idempotency)

    async def get(self, trace_id: str) -> JobRecord | None:
        """见 JobStore.get。"""
        return await self._store.get(trace_id)

    async def advance(self, trace_id: str, owner: str, state: JobState) -> AdvanceResult:
        """见 JobStore.advance。"""
        return await self._store.advance(trace_id, owner, state)

    async def finish(
        self, trace_id: str, owner: str, outcome: CallbackPayload
    ) -> CallbackPayload | None:
        """见 JobStore.finish。"""
        return await self._store.finish(trace_id, owner, outcome)

    async def record_delivery(
        self, trace_id: str, owner: str, result: DeliveryOutcome
    ) -> JobRecord | None:
        """见 JobStore.record_delivery。"""
        return await self._store.record_delivery(trace_id, owner, result)

    async def heartbeat(self, owner: str, trace_ids: list[str]) -> HeartbeatReply:
        """见 JobStore.heartbeat。"""
        return await self._store.heartbeat(owner, trace_ids)

    async def claim_due(self, owner: str, limit: int) -> list[WorkItem]:
        """见 JobStore.claim_due。"""
        return await self._store.claim_due(owner, limit)

    async def release(self, owner: str, trace_ids: list[str]) -> None:
        """见 JobStore.release。"""
        await self._store.release(owner, trace_ids)

    async def request_cancel(self, trace_id: str) -> CancelResult:
        """见 JobStore.request_cancel。"""
        return await self._store.request_cancel(trace_id)

    async def redeliver(self, trace_id: str) -> JobRecord | None:
        """见 JobStore.redeliver。"""
        return await self._store.redeliver(trace_id)

    async def list_undelivered(self, limit: int) -> list[JobRecord]:
        """见 JobStore.list_undelivered。"""
        return await self._store.list_undelivered(limit)

    async def purge_finished(self, limit: int) -> int:
        """见 JobStore.purge_finished。"""
        return await self._store.purge_finished(limit)

    async def counts(self) -> LedgerCounts:
        """见 JobStore.counts。"""
        return await self._store.counts()

    async def check_health(self) -> None:
        """能打开数据库并查询即健康。"""
        await self._store.ping()

    async def __del__(self) -> None:
        await self._store.close()


# 必须单副本：SQLite 文件只由一个进程写；换成服务器数据库后才可多副本
ledger_deployment: Deployment = serve.deployment(
    name="Ledger",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=2000,
    # 续租与扫描每隔几秒就调用一次：不写 Serve 的逐次访问日志（业务日志照常）
    logging_config={"enable_access_log": False},
)(Ledger)
