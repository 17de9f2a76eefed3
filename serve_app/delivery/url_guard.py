"""回调地址的 SSRF 防护：受理时检查 URL，投递时检查实际连接的 IP。

规则（由 CallbackTargetPolicy 执行）：
- 只允许 http / https，URL 里不能带用户名密码；
- 链路本地与云元数据地址（169.254.0.0/16、fe80::/10、fd00:ec2::254、100.100.100.200 …）、
  未指定 / 组播 / 保留地址：一律拒绝，白名单也放不开；
- 配置了白名单（CALLBACK_ALLOWED_HOSTS）时，主机必须匹配其中一项（精确名或 *.后缀，可带端口）；
- 回环与内网地址默认拒绝：本机剖面打开 callback_allow_loopback，或主机在白名单里才放行。

投递时经 GuardedNetworkBackend 连接：先解析主机名、逐个检查 IP，再连接“检查过的那个 IP”，
DNS 在受理之后变了（DNS rebinding）也连不到被禁的地址。
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

from serve_app.core.errors import UnsafeCallbackUrl
from serve_app.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# 永远拒绝：链路本地（含 AWS/GCP/Azure 元数据 169.254.169.254）与各家云的元数据地址
_ALWAYS_BLOCKED = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",  # AWS IMDS（IPv6）
        "100.100.100.200/32",  # 阿里云元数据
        "0.0.0.0/8",
    )
)
# 内网（默认拒绝，可放开）：RFC 1918、CGNAT、IPv6 ULA
_PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
RESOLVE_TIMEOUT_S = 5.0


async def system_resolver(host: str, port: int) -> list[str]:
    """系统 DNS 解析（带超时），返回去重后的 IP 字符串。"""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_TIMEOUT_S):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _normalise(ip: IPAddress) -> IPAddress:
    """IPv4 映射 / 兼容的 IPv6 地址按其中的 IPv4 判断（::ffff:169.254.169.254 也是元数据）。"""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class HostPattern:
    """白名单一项：`name`、`*.suffix`，可带 `:port`。"""

    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """解析 `host[:port]`（IPv6 用 [addr]:port）。"""
        text = text.strip().lower()
        host, port = text, None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else None
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = int(port_text)
        return cls(host, port)

    def matches(self, host: str, port: int) -> bool:
        """主机（与端口）是否匹配。"""
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and host != self.host[2:]
        return host == self.host


class CallbackTargetPolicy:
    """回调目标的放行规则（受理与投递共用）。"""

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        allow_loopback: bool = False,
        allow_private: bool = False,
        resolver: Resolver = system_resolver,
    ) -> None:
        self._patterns = tuple(HostPattern.parse(item) for item in allowed_hosts)
        self._allow_loopback = allow_loopback
        self._allow_private = allow_private
        self.resolver = resolver

    def _allowlisted(self, host: str, port: int) -> bool:
        return any(p.matches(host, port) for p in self._patterns)

    def check_host(self, host: str, port: int) -> None:
        """主机名层面的检查（白名单）。"""
        if self._patterns and not self._allowlisted(host, port):
            raise UnsafeCallbackUrl(
                f"回调主机 {host}:{port} 不在白名单 CALLBACK_ALLOWED_HOSTS 里，请联系运维添加"
            )

    def check_ip(self, host: str, port: int, address: str) -> None:
        """某个要连接的 IP 是否允许。"""
        ip = _normalise(ipaddress.ip_address(address))
        reason = None
        if any(ip in net for net in _ALWAYS_BLOCKED if net.version == ip.version):
            reason = "链路本地 / 云元数据地址"
        elif ip.is_loopback:
            if not (self._allow_loopback or self._allowlisted(host, port)):
                reason = "回环地址"
        elif ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            reason = "未指定 / 组播 / 保留地址"
        elif any(ip in net for net in _PRIVATE if net.version == ip.version) or ip.is_private:
            if not (self._allow_private or self._allowlisted(host, port)):
                reason = "内网地址"
        if reason is not None:
            raise UnsafeCallbackUrl(f"回调地址 {host} 解析到 {ip}（{reason}），不允许回调到这里")

    async def check_url(self, url: str) -> None:
        """受理时检查整条 URL：协议、主机白名单与解析出的每个地址。"""
        host, port = self._split(url)
        self.check_host(host, port)
        for address in await self.addresses(host, port):
            self.check_ip(host, port, address)

    async def addresses(self, host: str, port: int) -> list[str]:
        """主机的全部 IP（IP 字面量原样返回）；解析失败给出明确原因。"""
        literal = _literal_ip(host)
        if literal is not None:
            return [str(literal)]
        try:
            found = await self.resolver(host, port)
        except (OSError, TimeoutError) as exc:
            raise UnsafeCallbackUrl(f"回调主机 {host} 无法解析：{exc}") from exc
        if not found:
            raise UnsafeCallbackUrl(f"回调主机 {host} 没有可用地址")
        return found

    @staticmethod
    def _split(url: str) -> tuple[str, int]:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"}:
            raise UnsafeCallbackUrl(f"callback_url 必须是 http 或 https，收到 '{parts.scheme}'")
        if parts.username or parts.password:
            raise UnsafeCallbackUrl("callback_url 不能包含用户名或密码")
        if not parts.hostname:
            raise UnsafeCallbackUrl("callback_url 缺少主机名")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.hostname.lower(), port


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """连接前检查目标 IP 的网络后端：只连接检查通过的那个 IP（TLS 仍按原主机名校验）。"""

    def __init__(self, policy: CallbackTargetPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """解析、逐个检查，再按顺序尝试连接通过检查的地址。"""
        self._policy.check_host(host, port)
        addresses = await self._policy.addresses(host, port)
        for address in addresses:
            self._policy.check_ip(host, port, address)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def sleep(self, seconds: float) -> None:
        """委托给默认后端。"""
        await self._inner.sleep(seconds)


def guarded_transport(policy: CallbackTargetPolicy) -> httpx.AsyncHTTPTransport:
    """一个所有连接都经 GuardedNetworkBackend 的 httpx 传输层。

    httpx 0.28 的 AsyncHTTPTransport 不接受 network_backend 参数：构造后换掉其连接池，
    沿用它按 verify 等参数建好的 SSL 上下文（httpx / httpcore 版本由 uv.lock 固定，有测试覆盖）。
    """
    transport = httpx.AsyncHTTPTransport(retries=0)
    default_pool = transport._pool
    assert isinstance(default_pool, httpcore.AsyncConnectionPool)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=default_pool._ssl_context,
        network_backend=GuardedNetworkBackend(policy),
    )
    return transport


def callback_target_policy(
    settings: Settings, resolver: Resolver = system_resolver
) -> CallbackTargetPolicy:
    """按配置构造放行规则。"""
    return CallbackTargetPolicy(
        settings.callback_allowed_hosts,
        allow_loopback=settings.callback_allow_loopback,
        allow_private=settings.callback_allow_private,
        resolver=resolver,
    )
