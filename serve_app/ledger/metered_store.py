"""给任一 JobStore 计时：每个操作的耗时按 op / outcome 记进 reports_ledger_op_seconds。

入口副本看到的耗时（含 Ray 往返或连接池排队），正是作业路径实际付出的。
包装是通用的：store.OPERATIONS 里的每个操作都经 __getattr__ 计时转发，协议加操作时这里不用改。
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from serve_app.core.metrics import ReportMetrics
from serve_app.ledger.store import OPERATIONS, JobStore

Operation = Callable[..., Awaitable[Any]]


class MeteredJobStore:
    """JobStore 的计时包装：行为与被包装的存储完全相同（用 metered() 取得 JobStore 类型）。"""

    def __init__(self, inner: JobStore, metrics: ReportMetrics) -> None:
        self.inner = inner
        self._seconds = metrics.ledger_op_seconds

    def __getattr__(self, op: str) -> Operation:
        # 只在普通属性找不到时调用：操作表之外的名字照常 AttributeError
        if op not in OPERATIONS:
            raise AttributeError(op)
        call: Operation = getattr(self.inner, op)

        async def timed(*args: Any) -> Any:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = await call(*args)
                outcome = "ok"
                return result
            finally:
                self._seconds.observe(time.perf_counter() - started, {"op": op, "outcome": outcome})

        # 记进实例属性：之后的访问直接命中，不再经 __getattr__ 每次新建闭包（作业路径上的热点）
        self.__dict__[op] = timed
        return timed

    async def ping(self) -> None:
        """健康检查：不计时。"""
        await self.inner.ping()

    async def close(self) -> None:
        """关闭被包装的存储。"""
        await self.inner.close()


def metered(inner: JobStore, metrics: ReportMetrics) -> JobStore:
    """计时包装后的存储（按协议的类型交给调用方）。"""
    return cast(JobStore, MeteredJobStore(inner, metrics))
