"""Ledger 部署：单副本独占 SQLite 账本文件；各节点上的入口副本经句柄访问。"""

from __future__ import annotations

from loguru import logger
from ray import serve
from ray.serve.deployment import Deployment

from serve_app.core.logging import configure_logging
from serve_app.core.settings import Settings
from serve_app.ledger.sqlite_store import SqliteJobStore


class Ledger(SqliteJobStore):
    """JobStore 的全部方法即部署方法；连接在第一次调用时打开，副本关闭时关闭。"""

    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_json_path)
        super().__init__(settings.resolved_ledger_path, settings.jobs)
        logger.info("作业账本：{}", settings.resolved_ledger_path)

    async def check_health(self) -> None:
        """能打开数据库即健康。"""
        await self._connection()

    async def __del__(self) -> None:
        await self.close()


# 必须单副本：SQLite 文件只由一个进程写；换成服务器数据库后才可多副本
ledger_deployment: Deployment = serve.deployment(
    name="Ledger",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=2000,
    # 续租与扫描每隔几秒就调用一次：不写 Serve 的逐次访问日志（业务日志照常）
    logging_config={"enable_access_log": False},
)(Ledger)
