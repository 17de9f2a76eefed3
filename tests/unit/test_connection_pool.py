"""LinearConnectionPool 分连接的那一步：用假连接直接驱动真实的池子，逐条对照 httpcore 的语义。

对真实接收方的行为（连接复用、慢主机不拖住别的主机、对端关掉的连接不复用）在
tests/local/test_callback_client.py。
"""

from __future__ import annotations

import httpcore
import pytest
from httpcore._async.connection_pool import AsyncPoolRequest
from httpcore._async.interfaces import AsyncConnectionInterface

from serve_app.core import connection_pool
from serve_app.core.connection_pool import LinearConnectionPool

A = httpcore.URL("http://a.example/hook")
B = httpcore.URL("http://b.example/hook")


class FakeConnection(AsyncConnectionInterface):
    """只有池子分连接时会问的那几个方法；记下 has_expired 被问了几次。"""

    def __init__(self, url: httpcore.URL, *, idle: bool = True, expired: bool = False) -> None:
        self.origin = url.origin
        self.idle = idle
        self.expired = expired
        self.closed = False
        self.expiry_checks = 0

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self.origin

    def is_closed(self) -> bool:
        return self.closed

    def is_idle(self) -> bool:
        return self.idle

    def is_available(self) -> bool:
        return self.idle

    def has_expired(self) -> bool:
        self.expiry_checks += 1
        return self.expired


class Pool(LinearConnectionPool):
    """新建连接也是假连接，记下建了哪些。"""

    def __init__(
        self, *, max_connections: int | None = None, max_keepalive_connections: int | None = None
    ) -> None:
        super().__init__(
            max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
        )
        self.created: list[FakeConnection] = []

    def create_connection(self, origin: httpcore.Origin) -> FakeConnection:
        connection = FakeConnection(httpcore.URL(scheme=origin.scheme, host=origin.host))
        connection.origin = origin
        connection.idle = False
        self.created.append(connection)
        return connection


def _queue(pool: Pool, url: httpcore.URL) -> AsyncPoolRequest:
    request = AsyncPoolRequest(httpcore.Request("POST", url))
    pool._requests.append(request)
    return request


def _pool(
    *connections: FakeConnection,
    max_connections: int | None = None,
    max_keepalive_connections: int | None = None,
) -> Pool:
    pool = Pool(
        max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
    )
    pool._connections.extend(connections)
    return pool


@pytest.fixture(autouse=True)
def _no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """默认不在整体检查的那一刻：只有要复用的连接才查过期（整体检查单独测）。"""
    monkeypatch.setattr(connection_pool, "_SWEEP_INTERVAL_S", 3600.0)
    monkeypatch.setattr(LinearConnectionPool, "_next_sweep", float("inf"))


async def test_checked_against_the_httpcore_it_was_written_for() -> None:
    # 这个类改写了 httpcore 的内部方法：升级 httpcore 时
    # 对照上游的 _assign_requests_to_connections 重新看一遍
    assert httpcore.__version__ == "1.0.9"


async def test_an_idle_connection_goes_to_one_queued_request_only() -> None:
    idle = FakeConnection(A)
    pool = _pool(idle)
    first, second = _queue(pool, A), _queue(pool, A)
    assert pool._assign_requests_to_connections() == []
    # httpcore 1.0.9 会把 idle 同时分给两个请求，输的那个再排队、再整理一遍池子
    assert first.connection is idle
    assert second.connection is pool.created[0]
    assert pool._connections == [idle, pool.created[0]]


async def test_idle_connections_are_reused_by_origin_only() -> None:
    on_b = FakeConnection(B)
    pool = _pool(on_b)
    request = _queue(pool, A)
    pool._assign_requests_to_connections()
    assert request.connection is pool.created[0] and pool.created[0].origin == A.origin
    assert on_b in pool._connections


async def test_a_connection_promised_to_a_request_is_neither_closed_nor_handed_out_again() -> None:
    idle = FakeConnection(A, expired=True)
    pool = _pool(idle, max_keepalive_connections=0)
    promised = _queue(pool, A)
    promised.assign_to_connection(idle)
    other = _queue(pool, A)
    assert pool._assign_requests_to_connections() == []
    assert idle in pool._connections and idle.expiry_checks == 0
    assert other.connection is pool.created[0]


async def test_an_expired_idle_connection_is_closed_when_picked_and_the_request_gets_another() -> (
    None
):
    stale, fresh = FakeConnection(A, expired=True), FakeConnection(A)
    pool = _pool(stale, fresh)
    request = _queue(pool, A)
    assert pool._assign_requests_to_connections() == [stale]
    assert request.connection is fresh
    assert pool._connections == [fresh]


async def test_idle_connections_are_probed_only_when_picked_between_sweeps() -> None:
    idle = [FakeConnection(A) for _ in range(100)]
    pool = _pool(*idle)
    _queue(pool, A)
    pool._assign_requests_to_connections()
    # 对每个空闲连接 poll 一次 socket 是 httpcore 每次整理池子都做的；这里只查被选中的那一个
    assert sum(c.expiry_checks for c in idle) == 1


async def test_a_sweep_probes_every_idle_connection_and_closes_the_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(LinearConnectionPool, "_next_sweep", 0.0)
    stale, fresh = FakeConnection(A, expired=True), FakeConnection(A)
    pool = _pool(stale, fresh)
    assert pool._assign_requests_to_connections() == [stale]
    assert stale.expiry_checks == 1 and fresh.expiry_checks == 1
    # 下一次整体检查在一个间隔之后：这之间不再挨个 poll
    pool._assign_requests_to_connections()
    assert fresh.expiry_checks == 1


def _in_use(pool: Pool, connection: FakeConnection) -> None:
    """一个正在这个连接上收发的请求。"""
    request = AsyncPoolRequest(httpcore.Request("POST", A))
    request.assign_to_connection(connection)
    pool._requests.append(request)


async def test_surplus_idle_connections_beyond_keepalive_close_oldest_first() -> None:
    old, mid, new = FakeConnection(A), FakeConnection(A), FakeConnection(A)
    busy = FakeConnection(A, idle=False)
    pool = _pool(old, busy, mid, new, max_keepalive_connections=2)
    _in_use(pool, busy)
    assert pool._assign_requests_to_connections() == [old]
    # 正在用的连接不算在 keepalive 上限里（httpcore 1.0.9 拿全部连接数去比）
    assert pool._connections == [busy, mid, new]


async def test_at_the_connection_limit_an_idle_connection_makes_room_or_the_request_waits() -> None:
    on_b = FakeConnection(B)
    busy = FakeConnection(A, idle=False)
    pool = _pool(busy, on_b, max_connections=2)
    _in_use(pool, busy)
    first = _queue(pool, A)
    assert pool._assign_requests_to_connections() == [on_b]
    assert first.connection is pool.created[0]
    second = _queue(pool, A)
    assert pool._assign_requests_to_connections() == []
    assert second.is_queued() and len(pool._connections) == 2


async def test_closed_connections_are_dropped_without_closing_them_again() -> None:
    gone = FakeConnection(A)
    gone.closed = True
    pool = _pool(gone)
    assert pool._assign_requests_to_connections() == []
    assert pool._connections == []


async def test_a_connection_nobody_uses_or_will_close_is_closed() -> None:
    # 分给它的请求在开始发送前被取消：连接还没连上（不空闲、没关），也没有请求再指着它
    orphan = FakeConnection(A, idle=False)
    busy = FakeConnection(A, idle=False)
    pool = _pool(orphan, busy)
    _in_use(pool, busy)
    assert pool._assign_requests_to_connections() == [orphan]
    assert pool._connections == [busy]
