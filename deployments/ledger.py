"""Ledger 部署：单副本持有 SQLite 账本；各节点上的入口副本经句柄（LedgerClient）访问。

对外三个端点：apply（一批账本操作，store.OPERATIONS 里的任一个）、settle_many（一批作业的收尾：
记结果 → 经 CallbackSender 投递 → 记投递，见 services/settlement.py）与 check_health。
收尾放在这里：账本就在本副本，入口每个作业少两次句柄调用（docs/performance.md 量过）。

设了 jobs.ledger_url（Postgres）时入口副本直连数据库，不经这里。部署仍然保留，原因有二：
serve_config*.yaml 的 Ledger 一节两种账本通用（配置里写了应用中没有的部署，Serve 拒绝部署，
而账本种类由 .env 决定，不该要求运维换一份 serve_config）；它的健康检查连同一个库，数据库不可达时
Ledger 在 Ray dashboard 里显示为不健康，值班的人一眼看到是账本出了问题。
代价是 0.1 CPU 的一个空闲副本。
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from loguru import logger
from ray import serve
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle

from deployments.handles.stages import HandleDeliveryStage
from deployments.handles.transport import light_handle
from deployments.metrics import replica_metrics
from serve_app.core.logging import configure_logging
from serve_app.core.settings import Settings
from serve_app.ledger.call_batcher import Call, Outcome, as_outcomes
from serve_app.ledger.postgres_store import PostgresJobStore
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.ledger.store import OPERATIONS, JobStore
from serve_app.services.pipeline import deliver_round
from serve_app.services.settlement import Settled, Settlement

# 每个作业在账本副本里留一行日志的操作
_LOGGED = {"finish": "结果（进入投递）", "record_delivery": "一轮回调投递"}


class Ledger:
    """JobStore 的远程端点：持有一个存储，公开 apply、settle_many 与 check_health。"""

    def __init__(self, settings: Settings, callbacks: DeploymentHandle[Any] | None = None) -> None:
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
        # 收尾要投递：Postgres 账本时入口自己收尾，不为用不到的句柄建路由器
        self._settlement: Settlement | None = None
        if callbacks is not None and settings.jobs.ledger_url is None:
            delivery = HandleDeliveryStage(light_handle(settings, callbacks))
            deliver = partial(deliver_round, delivery, replica_metrics())
            self._settlement = Settlement(self._store, deliver)

    async def apply(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
        """一批账本操作（LedgerClient 合并而来）：并发执行，存储把它们组提交成一个事务。

        按顺序返回 (成功, 返回值) 或 (失败, 异常)；只接受 store.OPERATIONS 里的操作。
        """
        for method, _ in calls:
            if method not in OPERATIONS:
                raise ValueError(f"Ledger.apply 不接受 {method!r}：只接受 {sorted(OPERATIONS)}")
        results = await asyncio.gather(
            *(self._apply_one(method, args) for method, args in calls), return_exceptions=True
        )
        for (method, args), result in zip(calls, results, strict=True):
            if method in _LOGGED and result is not None and not isinstance(result, BaseException):
                # 结果与投递各记一行（带 trace_id）：日志搜索里看得到账本这一站
                with logger.contextualize(trace_id=args[0]):
                    logger.info("账本已记录：{}", _LOGGED[method])
        return as_outcomes(results)

    async def _apply_one(self, method: str, args: tuple[Any, ...]) -> Any:
        # 在协程里才调用：参数个数不对的 TypeError 只进它自己的结果，同批别的作业照常
        return await getattr(self._store, method)(*args)

    async def settle_many(self, calls: list[Call]) -> list[Outcome]:
        """一批作业的收尾（入口按接收方合并而来）：各自记结果 → 投递 → 记投递，并发执行，账本写入
        照样组提交。按顺序返回 (成功, Settled 或 None) 或 (失败, 异常)：每个作业的异常只在它自己的
        结果里，整批只在请求不对时失败（入口据此判断端点不认，见 LedgerClient）。"""
        settlement = self._settlement
        if settlement is None:
            raise RuntimeError("本 Ledger 不收尾（Postgres 账本，或没有 CallbackSender 的句柄）")
        for method, _ in calls:
            if method != "finish_and_deliver":
                raise ValueError(f"Ledger.settle_many 只接受 finish_and_deliver，不接受 {method!r}")
        results = await asyncio.gather(
            *(self._settle(settlement, args) for _, args in calls), return_exceptions=True
        )
        return as_outcomes(results)

    @staticmethod
    async def _settle(settlement: Settlement, args: tuple[Any, ...]) -> Settled | None:
        # 参数在这里才解开：参数不对的调用只让它自己失败，不让整批失败
        job, owner, payload, passed = args
        with logger.contextualize(trace_id=job.trace_id):
            # 回调副本访问日志里的请求 id 由 HandleDeliveryStage.send 设成作业的 trace_id
            settled = await settlement.finish_and_deliver(job, owner, payload, passed)
            if settled is None:
                logger.warning("收尾：记录结果时租约已不归 {}，没有投递", owner)
            elif settled.after is not None:
                state = settled.after.callback.state
                logger.info("账本已记录：结果与一轮回调投递（回调 {}）", state)
            return settled

    async def check_health(self) -> None:
        """能打开数据库并查询即健康。"""
        await self._store.ping()

    async def __del__(self) -> None:
        await self._store.close()


# 必须单副本：SQLite 文件只由一个进程写（多副本协作请用 Postgres 账本，入口副本直连）
ledger_deployment: Deployment = serve.deployment(
    name="Ledger",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=2000,
    # 续租与扫描每隔几秒就调用一次：不写 Serve 的逐次访问日志（业务日志照常）
    logging_config={"enable_access_log": False},
)(Ledger)
