"""httpx 用的 httpcore 连接池：把“给请求分连接”这一步改成线性的（回调客户端用它）。

httpcore 1.0.9 的 AsyncConnectionPool 每来一个请求、每归还一个连接都整理一遍池子，
这一步对连接数是平方的（清理多余空闲连接时每个连接都重新数一遍全部连接，再为每个排队请求
重新筛一遍全部连接），还会把同一个空闲连接同时分给好几个排队请求（输的那些再排一次队、
再整理一遍）。回调副本对一个忙的 backend B 保持几十个连接时，这一步就是大头：
并发 64 的微基准里每次投递 2.4 ms CPU，一半在这里（上游的修补 encode/httpcore#1035 还没合入；
OpenAI SDK 用的 httpx2 分支已修，见 docs/performance.md 为什么不换用它）。

这里只换掉这一个方法，语义不变：关掉已关闭 / 过期的连接、空闲连接超过 keepalive 上限时关掉最早的，
排队的请求优先复用同一 origin 的空闲连接，否则在上限内新建，满了就关一个空闲的腾位置。
另外四点：空闲连接的过期检查（每个连接 poll 一次 socket）每秒整体做一次，要复用的那个每次都查；
一个空闲连接一轮只分给一个请求；已分给某个请求、那个请求还没开始发送的连接不当作空闲
（不被关掉，也不再分给别人）；分给的请求还没发送就被取消、从此没人用的连接关掉（httpcore 留着它）。
只用于 HTTP/1.1（回调客户端没开 HTTP/2）：一个连接同时只服务一个请求。
依赖 httpcore 的内部属性，版本由 uv.lock 固定；tests/unit/test_connection_pool.py 盯着版本与行为。
"""

from __future__ import annotations

import time

import httpcore
import httpx
from httpcore._async.interfaces import AsyncConnectionInterface

# 空闲连接的过期检查（要对每个连接的 socket 做一次 poll）多久整体做一次；要复用的那个连接每次都查
_SWEEP_INTERVAL_S = 1.0


class LinearConnectionPool(httpcore.AsyncConnectionPool):
    """分连接这一步是线性的 httpcore 连接池（其余行为同 httpcore）。"""

    _next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        # 已分给请求的连接：请求还没开始发送时它看上去仍是空闲的，不能关、不能再分
        reserved = {id(r.connection) for r in self._requests if r.connection is not None}
        closing: list[AsyncConnectionInterface] = []
        idle = self._tidy(reserved, closing)
        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            reuse = self._take_idle(idle, origin, closing)
            if reuse is not None:
                pool_request.assign_to_connection(reuse)
                continue
            if len(self._connections) >= self._max_connections:
                if not idle:
                    # 满了且没有可腾的空闲连接：留在队里，等有连接归还时的下一轮
                    continue
                evicted = idle.pop(0)
                self._connections.remove(evicted)
                closing.append(evicted)
            connection = self.create_connection(origin)
            self._connections.append(connection)
            pool_request.assign_to_connection(connection)
        return closing

    def _tidy(
        self, reserved: set[int], closing: list[AsyncConnectionInterface]
    ) -> list[AsyncConnectionInterface]:
        """去掉已关的连接，关掉过期的、没人要的与超出 keepalive 上限的空闲连接。

        返回可分的空闲连接（旧的在前）。空闲连接的过期检查要 poll 一次 socket：
        每秒整体查一次，平时只查要复用的那个（_take_idle）。"""
        now = time.monotonic()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + _SWEEP_INTERVAL_S
        kept: list[AsyncConnectionInterface] = []
        idle: list[AsyncConnectionInterface] = []
        for connection in self._connections:
            if connection.is_closed():
                continue
            if id(connection) in reserved:
                kept.append(connection)
                continue
            if not connection.is_idle():
                # 没有请求用着、又不空闲：分给的请求还没开始发送就被取消了，以后没人用它、也没人关它
                closing.append(connection)
                continue
            # 空闲连接的 has_expired 要 poll 一次 socket（对端关了没有）：平时只查要复用的那个
            if sweep and connection.has_expired():
                closing.append(connection)
                continue
            kept.append(connection)
            idle.append(connection)
        surplus = len(idle) - self._max_keepalive_connections
        if surplus > 0:
            dropped = {id(c) for c in idle[:surplus]}
            closing.extend(idle[:surplus])
            kept = [c for c in kept if id(c) not in dropped]
            idle = idle[surplus:]
        self._connections = kept
        return idle

    def _take_idle(
        self,
        idle: list[AsyncConnectionInterface],
        origin: httpcore.Origin,
        closing: list[AsyncConnectionInterface],
    ) -> AsyncConnectionInterface | None:
        """取一个能服务 origin 的空闲连接；取出时查过期（对端已关的连接不复用，顺手关掉）。"""
        for connection in [c for c in idle if c.can_handle_request(origin)]:
            idle.remove(connection)
            if connection.has_expired():
                self._connections.remove(connection)
                closing.append(connection)
                continue
            return connection
        return None


def linear_transport(
    limits: httpx.Limits, network_backend: httpcore.AsyncNetworkBackend | None = None
) -> httpx.AsyncHTTPTransport:
    """连接池换成 LinearConnectionPool 的 httpx 传输层（不重试）。

    network_backend 为空时用 httpcore 默认的。httpx 0.28 的 AsyncHTTPTransport 没有换连接池的参数：
    构造后换掉其连接池，沿用它按 verify 等参数建好的 SSL 上下文（httpx / httpcore 版本由 uv.lock
    固定，有测试覆盖）。limits 要带过去：httpcore 连接池自己的默认只有 10 个连接。
    """
    transport = httpx.AsyncHTTPTransport(retries=0, limits=limits)
    default_pool = transport._pool
    assert isinstance(default_pool, httpcore.AsyncConnectionPool)
    transport._pool = LinearConnectionPool(
        ssl_context=default_pool._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=network_backend,
    )
    return transport
