"""经 DeploymentHandle 调用 Ledger 部署的 JobStore 实现：每次调用有超时，瞬时错误重试。

每个账本操作都经 CallBatcher 合并：同一副本里并发的调用（作业路径上的受理、推进、结果、投递，
以及续租、扫描）共用一次句柄调用 Ledger.apply，账本把整批组提交成一个事务。转发是通用的：
store.OPERATIONS 里的操作都经 __getattr__ 发出，协议加操作时这里不用改。
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ray.serve.handle import DeploymentHandle

from deployments.handles.ray_errors import TRANSIENT_HANDLE_ERRORS, handle_retrying
from serve_app.core.errors import LedgerUnavailable
from serve_app.core.settings import JobPolicy
from serve_app.ledger.call_batcher import Call, CallBatcher, Outcome
from serve_app.ledger.store import OPERATIONS, JobStore

# 重试用尽后仍是这些异常：账本不可用
_UNAVAILABLE: tuple[type[Exception], ...] = (*TRANSIENT_HANDLE_ERRORS, TimeoutError)


class LedgerClient:
    """JobStore 的句柄实现（用 ledger_client() 取得 JobStore 类型）。"""

    def __init__(self, handle: DeploymentHandle[Any], policy: JobPolicy) -> None:
        self._handle = handle
        self._timeout_s = policy.ledger_call_timeout_s
        self.batcher = CallBatcher(self._apply)

    def __getattr__(self, op: str) -> Callable[..., Awaitable[Any]]:
        if op not in OPERATIONS:
            raise AttributeError(op)

        async def forward(*args: Any) -> Any:
            return await self.batcher.call(op, *args)

        # 记进实例属性：之后的访问直接命中，不再经 __getattr__ 每次新建闭包（作业路径上的热点）
        self.__dict__[op] = forward
        return forward

    async def _call(self, method: str, *args: Any) -> Any:
        """调用 Ledger 部署的一个端点（超时、重试；用尽即 LedgerUnavailable）。"""
        endpoint = getattr(self._handle, method)

        async def attempt() -> Any:
            async with asyncio.timeout(self._timeout_s):
                return await endpoint.remote(*args)

        retrying = handle_retrying(also=_UNAVAILABLE, initial_backoff_s=0.2, max_backoff_s=5)
        try:
            return await retrying(attempt)
        except _UNAVAILABLE as exc:
            raise LedgerUnavailable(f"作业账本暂不可用（{method}）") from exc

    async def _apply(self, calls: list[Call]) -> list[Outcome]:
        """一批调用 → 一次 Ledger.apply（整批重试：每个操作按 trace_id 与租约判定，可安全重放）。"""
        try:
            return cast(list[Outcome], await self._call("apply", calls))
        except LedgerUnavailable as exc:
            names = sorted({method for method, _ in calls})
            raise LedgerUnavailable(f"作业账本暂不可用（{'、'.join(names)}）") from exc

    async def ping(self) -> None:
        """Ledger 副本的健康检查。"""
        await self._call("check_health")

    async def close(self) -> None:
        """句柄由 Serve 管理，无需释放。"""


def ledger_client(handle: DeploymentHandle[Any], policy: JobPolicy) -> JobStore:
    """经 Ledger 部署访问的账本（按协议的类型交给调用方）。"""
    return cast(JobStore, LedgerClient(handle, policy))
