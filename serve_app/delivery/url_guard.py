"""回调地址的 SSRF 防护：受理时检查 URL，投递时检查实际连接的 IP。

规则（由 CallbackTargetPolicy 执行，按本模块自己的地址表判定，不依赖解释器的 is_private 表）：
- 只允许 http / https，URL 里不能带用户名密码；
- 云元数据地址（169.254.169.254、fd00:ec2::254、168.63.129.16、100.100.100.200）、链路本地、
  未指定 / 组播 / 保留 / 基准测试等不可路由的地址：一律拒绝，什么设置都放不开；
- 回环地址只在 callback_allow_loopback 打开时放行（白名单放不开回环）；
- 内网地址（10/8、172.16/12、192.168/16、100.64/10、fc00::/7）默认拒绝，callback_allow_private
  或主机在白名单（CALLBACK_ALLOWED_HOSTS）里时放行；
- 嵌着 IPv4 的 IPv6（::ffff:0:0/96、64:ff9b::/96、64:ff9b:1::/48、2002::/16、::/96）
  按嵌着的 IPv4 判定；
- 配置了白名单时，主机必须匹配其中一项（精确名或 *.后缀，可带端口）。
被拒时对调用方只说“不是允许的回调地址”（不说解析到了什么），详细原因写日志。

投递时主机名经 GuardedResolver 解析：逐个检查 IP，连接器只连“检查过的那些 IP”，DNS 在受理之后
变了（DNS rebinding）也连不到被禁的地址；IP 字面量不经解析器（aiohttp 直接连），发请求前由
check_literal 检查。投递时解析失败当作网络错误重试。
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from loguru import logger

from serve_app.core.errors import UnsafeCallbackUrl
from serve_app.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# 地址表：(网段, 类别)。类别：unusable / link_local（永远拒绝）、loopback（只有 allow_loopback
# 放行）、private（allow_private 或白名单放行）。不在表里的是公网地址。
_TABLE: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), category)
    for net, category in (
        ("0.0.0.0/8", "unusable"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "private"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link_local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "unusable"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "unusable"),
        ("224.0.0.0/4", "unusable"),
        ("240.0.0.0/4", "unusable"),
        ("::/128", "unusable"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link_local"),
        ("fec0::/10", "unusable"),
        ("ff00::/8", "unusable"),
    )
)
# 云元数据地址：在哪个网段都一律拒绝（allow_private、白名单都放不开）
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "168.63.129.16", "100.100.100.200")
)
# 嵌着 IPv4 的 IPv6 网段 → 取出 IPv4 的办法（右移位数）
_EMBEDDED_V4 = tuple(
    (ipaddress.IPv6Network(net), shift)
    for net, shift in (
        ("::ffff:0:0/96", 0),  # IPv4 映射
        ("64:ff9b::/96", 0),  # NAT64 知名前缀
        ("64:ff9b:1::/48", 0),  # NAT64 本地前缀
        ("2002::/16", 80),  # 6to4：第 16–48 位
        ("::/96", 0),  # IPv4 兼容（已废弃；:: 与 ::1 另有判定）
    )
)
_REASONS = {
    "metadata": "云元数据地址",
    "link_local": "链路本地地址",
    "unusable": "不可路由的地址（未指定 / 组播 / 保留 / 基准测试）",
    "loopback": "回环地址",
    "private": "内网地址",
}
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


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """嵌着 IPv4 的 IPv6 地址换成那个 IPv4（::ffff:169.254.169.254 也是元数据）；其余原样。"""
    if isinstance(ip, ipaddress.IPv6Address) and int(ip) > 1:
        for net, shift in _EMBEDDED_V4:
            if ip in net:
                return ipaddress.IPv4Address((int(ip) >> shift) & 0xFFFFFFFF)
    return ip


def classify(ip: IPAddress) -> str | None:
    """按本模块的地址表给出类别（metadata / link_local / unusable / loopback / private）；
    公网为 None。"""
    ip = embedded_ipv4(ip)
    if ip in _METADATA:
        return "metadata"
    for net, category in _TABLE:
        if net.version == ip.version and ip in net:
            return category
    return None


class _Unresolvable(Exception):
    """主机名解析失败（含超时）：受理时是 422，投递时当作网络错误重试。"""


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
        """某个要连接的 IP 是否允许；被拒时对调用方不说解析结果，详细原因写日志。"""
        ip = ipaddress.ip_address(address)
        category = classify(ip)
        allowed = (
            category is None
            or (category == "loopback" and self._allow_loopback)
            or (category == "private" and (self._allow_private or self._allowlisted(host, port)))
        )
        if allowed:
            return
        assert category is not None
        logger.warning("回调地址被拒：{}:{} 解析到 {}（{}）", host, port, ip, _REASONS[category])
        raise UnsafeCallbackUrl(
            f"回调主机 {host} 不是允许的回调地址：请用公网可达的 http(s) 地址，"
            "或请运维把它加入 CALLBACK_ALLOWED_HOSTS"
        )

    async def check_url(self, url: str) -> None:
        """受理时检查整条 URL：协议、主机白名单与解析出的每个地址。"""
        host, port = self._split(url)
        self.check_host(host, port)
        try:
            addresses = await self.addresses(host, port)
        except _Unresolvable as exc:
            logger.warning("回调主机 {} 无法解析：{}", host, exc)
            raise UnsafeCallbackUrl(
                f"回调主机 {host} 无法解析：请检查 callback_url 的主机名"
            ) from exc
        for address in addresses:
            self.check_ip(host, port, address)

    def check_literal(self, url: str) -> None:
        """主机是 IP 字面量时（aiohttp 不经解析器直接连）：发请求前按白名单与地址表检查；主机名不管
        （连接时由 GuardedResolver 检查）。"""
        host, port = self._split(url)
        literal = _literal_ip(host)
        if literal is not None:
            self.check_host(host, port)
            self.check_ip(host, port, str(literal))

    async def addresses(self, host: str, port: int) -> list[str]:
        """主机的全部 IP（IP 字面量原样返回）；解析失败或没有地址抛 _Unresolvable。"""
        literal = _literal_ip(host)
        if literal is not None:
            return [str(literal)]
        try:
            found = await self.resolver(host, port)
        except (OSError, TimeoutError) as exc:
            raise _Unresolvable(f"{type(exc).__name__}: {exc}") from exc
        if not found:
            raise _Unresolvable("没有可用地址")
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


class GuardedResolver(AbstractResolver):
    """aiohttp 连接器的解析器：解析主机名、逐个检查 IP，只交出检查通过的地址
    （TLS 仍按原主机名校验）。

    被拒抛 UnsafeCallbackUrl（不是 OSError，aiohttp 原样抛给调用方：不连接、不重试）；暂时解析不了
    抛 OSError（aiohttp 包成连接错误，按网络错误重试）。"""

    def __init__(self, policy: CallbackTargetPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """主机名 → 检查过的地址（按解析的顺序，连接器逐个尝试）。"""
        del family
        self._policy.check_host(host, port)
        try:
            addresses = await self._policy.addresses(host, port)
        except _Unresolvable as exc:
            # DNS 暂时解析不了不是攻击：当作连接失败，按网络错误重试
            raise OSError(f"回调主机 {host} 暂时无法解析（{exc}）") from exc
        for address in addresses:
            self._policy.check_ip(host, port, address)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        """没有要释放的。"""


def guarded_connector(policy: CallbackTargetPolicy, keepalive_s: float) -> aiohttp.TCPConnector:
    """所有主机名都经 GuardedResolver 解析的 aiohttp 连接器（要在事件循环里创建）。

    连接数不设上限（limit=0）：同时在投的已按主机有名额（HostSlots），一个挂起的主机占不满整个池子；
    不缓存 DNS：每条新连接都重新解析、检查（保持着的连接连的是检查过的 IP）。"""
    return aiohttp.TCPConnector(
        limit=0,
        limit_per_host=0,
        resolver=GuardedResolver(policy),
        use_dns_cache=False,
        keepalive_timeout=keepalive_s,
    )


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
