"""账本的一条调用路径：计时包装、账本客户端与 Ledger 部署都按协议的操作表转发。

协议的成员由 typing 独立列出（不读 store.OPERATIONS）：协议加了操作而包装或客户端没跟上，
或者包装、客户端多出协议里没有的名字，这里失败。
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from deployments.handles.ledger_client import LedgerClient, ledger_client
from deployments.ledger import Ledger
from serve_app.core.settings import JobPolicy
from serve_app.ledger.metered_store import metered
from serve_app.ledger.store import OPERATIONS, JobStore
from tests.support.metrics import RecordingMetricFactory

_LIFECYCLE = {"ping", "close"}
PROTOCOL: frozenset[str] = frozenset(cast(Any, JobStore).__protocol_attrs__)


class RecordingStore:
    """记下每个调用的假存储：任一操作都返回 (操作名, 参数)。"""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, op: str) -> Callable[..., Awaitable[Any]]:
        async def record(*args: Any) -> Any:
            self.calls.append((op, args))
            return (op, args)

        return record


class LocalHandle:
    """把 handle.apply.remote(...) 直接交给进程内的 Ledger（不启动 Ray）。"""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __getattr__(self, endpoint: str) -> Any:
        target = getattr(self._ledger, endpoint)

        class _Remote:
            @staticmethod
            async def remote(*args: Any) -> Any:
                return await target(*args)

        return _Remote()


def _ledger_over(store: RecordingStore) -> Ledger:
    ledger = Ledger.__new__(Ledger)
    ledger._store = cast(JobStore, store)
    return ledger


def test_the_operation_table_is_the_protocol_less_its_lifecycle() -> None:
    assert OPERATIONS == PROTOCOL - _LIFECYCLE
    assert _LIFECYCLE <= PROTOCOL


@pytest.mark.parametrize("op", sorted(PROTOCOL - _LIFECYCLE))
async def test_every_protocol_operation_is_timed_by_the_metering_wrapper(op: str) -> None:
    inner = RecordingStore()
    recorder = RecordingMetricFactory()
    store = metered(cast(JobStore, inner), recorder.metrics())
    args = (f"{op}-arg", 7)
    assert await getattr(store, op)(*args) == (op, args)
    assert inner.calls == [(op, args)]
    assert recorder.observed("reports_ledger_op_seconds", op=op, outcome="ok")


@pytest.mark.parametrize("op", sorted(PROTOCOL - _LIFECYCLE))
async def test_every_protocol_operation_reaches_the_store_through_ledger_apply(op: str) -> None:
    inner = RecordingStore()
    client = ledger_client(
        cast(Any, LocalHandle(_ledger_over(inner))), JobPolicy(ledger_call_timeout_s=5)
    )
    args = (f"{op}-arg", 7)
    assert await getattr(client, op)(*args) == (op, args)
    assert inner.calls == [(op, args)]


def test_names_outside_the_protocol_are_not_forwarded() -> None:
    store = metered(cast(JobStore, RecordingStore()), RecordingMetricFactory().metrics())
    client = LedgerClient(cast(Any, object()), JobPolicy())
    for wrapper in (store, client):
        assert not hasattr(wrapper, "drop_table")


async def test_ledger_apply_refuses_an_unknown_operation() -> None:
    ledger = _ledger_over(RecordingStore())
    with pytest.raises(ValueError, match="drop_table"):
        await ledger.apply([("drop_table", ())])


async def test_ledger_apply_fails_only_the_call_with_wrong_arguments() -> None:
    """参数不对（如滚动升级时新旧入口的参数个数不同）只让那一个调用失败，同批别的照常执行。"""

    class StrictStore:
        async def get(self, trace_id: str) -> str:
            return trace_id

    ledger = Ledger.__new__(Ledger)
    ledger._store = cast(JobStore, StrictStore())
    outcomes = await ledger.apply([("get", ("a",)), ("get", ("b", "extra")), ("get", ("c",))])
    assert [ok for ok, _ in outcomes] == [True, False, True]
    assert [outcomes[0][1], outcomes[2][1]] == ["a", "c"]
    assert isinstance(outcomes[1][1], TypeError)


async def test_concurrent_operations_share_one_apply_call() -> None:
    inner = RecordingStore()
    client = LedgerClient(cast(Any, LocalHandle(_ledger_over(inner))), JobPolicy())
    await asyncio.gather(client.get("a"), client.heartbeat("me", ["a"]), client.counts())
    assert client.batcher.batches == 1 and client.batcher.calls == 3
    assert sorted(op for op, _ in inner.calls) == ["counts", "get", "heartbeat"]
