"""Postgres 账本的连接：连接池（psycopg_pool）在第一次使用时打开并迁移结构；每次调用有超时，
连接断开、池等待超时按 tenacity 重试，用尽即 LedgerUnavailable（503 + Retry-After）。"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger
from psycopg import AsyncConnection, OperationalError
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from serve_app.core.errors import LedgerUnavailable
from serve_app.ledger.postgres_schema import migrate
from serve_app.ledger.postgres_sql import Conn

# 连接断开、池里拿不到连接：可重试；用尽即账本不可用
_TRANSIENT = (OperationalError, PoolTimeout, TimeoutError)


class LedgerPool:
    """一个副本的连接池；run(work) 取一个连接执行 work(conn, now)。"""

    def __init__(
        self, url: str, *, size: int, timeout_s: float, clock: Callable[[], float]
    ) -> None:
        self._clock = clock
        self._timeout_s = timeout_s
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            connection_class=AsyncConnection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=1,
            max_size=size,
            open=False,
            timeout=timeout_s,
            name="ledger",
        )
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def _open(self) -> None:
        """第一次使用时打开连接池并迁移结构（数据库暂时不可达时下次调用再试）。"""
        async with self._ready_lock:
            if self._ready:
                return
            await self._pool.open()
            async with self._pool.connection() as conn:
                await migrate(conn)
            self._ready = True

    async def run[T](self, name: str, work: Callable[[Conn, float], Awaitable[T]]) -> T:
        """取一个连接执行 work(conn, now)：有超时，连接类错误重试，用尽即 LedgerUnavailable。"""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_attempt(3),
            wait=wait_exponential(multiplier=0.1, max=2),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with asyncio.timeout(self._timeout_s):
                        if not self._ready:
                            await self._open()
                        async with self._pool.connection() as conn:
                            return await work(conn, self._clock())
        except _TRANSIENT as exc:
            logger.opt(exception=exc).warning("Postgres 账本调用失败：{}", name)
            raise LedgerUnavailable(f"作业账本暂不可用（{name}）") from exc
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    async def close(self) -> None:
        """关闭连接池。"""
        await self._pool.close()
