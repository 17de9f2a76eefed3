"""组提交：账本的每个操作是一个同步函数（拿到连接，执行若干 SQL），交给账本专用的一个线程。

一批里的函数在同一个写事务里依次执行，各自包在 SAVEPOINT 里（一个失败只回滚它自己），
整批只提交（fsync）一次。没有在执行的批次时新来的函数立即成批，所以单个调用不多等；
负载越高，一批越大，每个作业分摊的落盘与线程切换越少。
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# 一个在账本线程里执行的单元：拿到连接，返回结果
Work = Callable[[sqlite3.Connection], Any]
# 一批最多合并的单元数（一个事务不至于过长）
MAX_BATCH = 512


@dataclass
class _Pending:
    work: Work
    future: asyncio.Future[Any] = field(repr=False)


class LedgerDatabase:
    """一个账本文件的单连接与组提交：连接在第一次使用时（在账本线程里）由 connect 打开。"""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        # 统计：已提交的批次与单元（基准据此报告平均批大小）
        self.batches = 0
        self.units = 0

    async def run(self, work: Work) -> Any:
        """在下一批的事务里执行 work，返回其结果（或抛出其异常；只回滚它自己的改动）。"""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(work, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="ledger-group-commit")
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-db")
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self._commit, [p.work for p in batch]
                )
            except asyncio.CancelledError:
                # 事件循环在关闭：等着的调用方一并取消，不会永远挂起
                for pending in (*batch, *self._pending):
                    pending.future.cancel()
                self._pending = []
                raise
            except Exception as exc:  # noqa: BLE001 - 打开或提交失败：整批都失败
                outcomes = [(False, exc)] * len(batch)
            for pending, (ok, value) in zip(batch, outcomes, strict=True):
                if pending.future.done():  # 调用方已取消（已提交的改动照样有效）
                    continue
                if ok:
                    pending.future.set_result(value)
                else:
                    pending.future.set_exception(value)

    def _commit(self, works: list[Work]) -> list[tuple[bool, Any]]:
        """（账本线程）一个事务执行整批，每个单元一个 SAVEPOINT，最后提交一次。"""
        if self._db is None:
            self._db = self._connect()
        db = self._db
        outcomes: list[tuple[bool, Any]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for work in works:
                db.execute("SAVEPOINT unit")
                try:
                    value = work(db)
                except Exception as exc:  # noqa: BLE001 - 只回滚这个单元，异常交给它的调用方
                    db.execute("ROLLBACK TO unit")
                    db.execute("RELEASE unit")
                    outcomes.append((False, exc))
                else:
                    db.execute("RELEASE unit")
                    outcomes.append((True, value))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.batches += 1
        self.units += len(works)
        return outcomes

    async def close(self) -> None:
        """等在途的批次提交后关闭连接（之后再用会重新打开）。"""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        executor, self._executor = self._executor, None
        if executor is not None:
            db, self._db = self._db, None
            if db is not None:
                await asyncio.get_running_loop().run_in_executor(executor, db.close)
            executor.shutdown(wait=False)
