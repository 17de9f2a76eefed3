"""回调 HTTP 客户端：每个副本一个 aiohttp 会话，按策略重试投递。

每次尝试都带同一个 `webhook-id`（接收方据此去重）；配置了密钥时按 Standard Webhooks 签名。
所有连接都经 SSRF 防护（见 url_guard），被拒的地址不重试。

用 aiohttp 而不是 httpx：一次投递的 CPU 在回调副本里是大头，同一个请求裸的 aiohttp 只花 httpx 的
三分之一到二十分之一（并发 1 / 64：0.23 对 0.70、0.11 对 2.28 ms；
docs/performance.md“回调客户端”一节）。
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import yarl
from loguru import logger
from standardwebhooks.webhooks import Webhook
from tenacity import AsyncRetrying

from serve_app.core.errors import UnsafeCallbackUrl
from serve_app.core.metrics import ReportMetrics
from serve_app.core.secret_files import ReloadingSecrets
from serve_app.core.settings import CallbackPolicy, Settings, check_signing_secrets
from serve_app.delivery.retry_policy import (
    CallbackRetrying,
    NoResponse,
    PermanentStatus,
    RetryableStatus,
    is_retryable_status,
    parse_retry_after,
)
from serve_app.delivery.url_guard import CallbackTargetPolicy, guarded_connector
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, webhook_id

USER_AGENT = "report-engine/0.1"
# 网络层失败时记进 callback.last_error 的统一说法
NO_HTTP_RESPONSE = "没有得到 HTTP 响应（连接失败、超时或协议错误，详情见服务日志）"


@dataclass
class _HostEntry:
    semaphore: asyncio.Semaphore
    users: int = 0


class HostSlots:
    """每个主机同时在投的名额。某主机没有在投、也没有在等的投递时即回收它的记录：
    回调地址来自调用方，主机数不设上限，记录不能只增不减。"""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._hosts: dict[str, _HostEntry] = {}

    def __len__(self) -> int:
        """此刻有投递在投或在等的主机数。"""
        return len(self._hosts)

    async def acquire(self, host: str, timeout_s: float) -> bool:
        """等一个名额；timeout_s 内没等到返回 False（之后不要 release）。"""
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = _HostEntry(asyncio.Semaphore(self.per_host))
        entry.users += 1
        acquired = False
        try:
            async with asyncio.timeout(timeout_s):
                await entry.semaphore.acquire()
            acquired = True
        except TimeoutError:
            pass
        finally:
            # 没拿到名额（超时或等待中被取消）：不占这条记录
            if not acquired:
                self._leave(host, entry)
        return acquired

    def release(self, host: str) -> None:
        """交还 acquire 成功拿到的名额。"""
        entry = self._hosts[host]
        entry.semaphore.release()
        self._leave(host, entry)

    def _leave(self, host: str, entry: _HostEntry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._hosts[host]


# 响应体只为复用连接而读：状态码就是全部信息，超过这么多字节、这么久没读完的就不读了（连接随之关掉）
_MAX_DRAINED_BODY = 64 * 1024
_DRAIN_TIMEOUT_S = 1.0
# 空闲连接保持多久（同 httpx 的默认）：忙的 backend B 下一次投递不用重新握手
_KEEPALIVE_S = 5.0


async def _drain_small_body(resp: aiohttp.ClientResponse) -> bool:
    """把小的响应体读完（读完的连接才放回池子复用，下一次投递不用重新握手）；返回是否读完。

    状态码此刻已经定了：体太大、太慢或读的时候断了都只是这条连接不复用，不改变投递的结果
    （收到 2xx 却因为响应体算作失败，会让接收方收到重复的回调）。"""
    received = 0
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            async for chunk in resp.content.iter_any():
                received += len(chunk)
                if received > _MAX_DRAINED_BODY:
                    return False
            return True
    return False


class CallbackClient:
    """把回调载荷 POST 给 backend B。"""

    def __init__(
        self,
        policy: CallbackPolicy,
        targets: CallbackTargetPolicy,
        signing_secrets: tuple[str, ...] = (),
        metrics: ReportMetrics | None = None,
        secrets_file: ReloadingSecrets | None = None,
    ) -> None:
        self._attempts_counter = (metrics or ReportMetrics()).callback_attempts
        self._retrying = CallbackRetrying(policy)
        self._policy = policy
        self._targets = targets
        self._deadline_s = policy.attempt_deadline_s
        self.host_slots = HostSlots(policy.max_concurrent_per_host)
        # 每把密钥签一次：轮换期间新旧两把同时生效，接收方用哪一把都验得过
        self._signers = [Webhook(secret) for secret in signing_secrets]
        # 密钥来自文件时：每次尝试前取当前内容（文件改了几秒内换上），内容变了才重建签名器
        self._secrets_file = secrets_file
        self._signed_with: tuple[str, ...] = signing_secrets
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """第一次投递时在副本的事件循环里建会话（aiohttp 的连接器要在事件循环里创建）。"""
        if self._session is None or self._session.closed:
            policy = self._policy
            self._session = aiohttp.ClientSession(
                connector=guarded_connector(self._targets, _KEEPALIVE_S),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=policy.connect_timeout_s,
                    sock_read=policy.read_timeout_s,
                ),
                headers={"User-Agent": USER_AGENT},
                # 不存接收方设的 cookie：一个接收方的 cookie 不该跟着发给下一次投递
                cookie_jar=aiohttp.DummyCookieJar(),
                # 不走环境变量里的代理：代理会绕过按 IP 的 SSRF 检查
                trust_env=False,
                raise_for_status=False,
            )
        return self._session

    async def deliver(self, url: str, payload: CallbackPayload) -> DeliveryOutcome:
        """投递一次回调（含重试）；不抛异常，结果在 DeliveryOutcome 里。

        同一主机同时在投的不超过 max_concurrent_per_host：等一个尝试时限仍没有名额，这一轮算未送达
        （可重试，按重投表再投），慢的 backend 占不满本副本的全部名额。
        """
        host = (urlsplit(url).hostname or "").lower()
        if not await self.host_slots.acquire(host, self._deadline_s):
            full = f"对主机 {host} 同时在投的回调已满（{self.host_slots.per_host}）"
            return self._failed(0, None, full)
        try:
            return await self._deliver(url, payload)
        finally:
            self.host_slots.release(host)

    async def _deliver(self, url: str, payload: CallbackPayload) -> DeliveryOutcome:
        body = payload.model_dump_json()
        content = body.encode()
        retrying = self._retrying.retrying()

        async def attempt() -> int:
            await self._refresh_signers()
            headers = self._headers(payload.trace_id, body)
            outcome = "no_response"
            try:
                status = await self._post_once(url, content, headers)
                outcome = "delivered"
                return status
            except RetryableStatus:
                outcome = "retryable_status"
                raise
            except PermanentStatus:
                outcome = "permanent_status"
                raise
            except UnsafeCallbackUrl:
                outcome = "refused"
                raise
            finally:
                self._attempts_counter.inc(tags={"outcome": outcome})

        try:
            status: int = await retrying(attempt)
        except RetryableStatus as exc:
            return self._failed(self._attempts(retrying), exc.status_code, str(exc))
        except PermanentStatus as exc:
            return self._failed(self._attempts(retrying), exc.status_code, str(exc), permanent=True)
        except NoResponse as exc:
            # 对外（callback.last_error）只说没有得到 HTTP 响应：不区分拒绝连接、超时与协议错误，
            # 免得回调成为探测内网端口开没开的工具；具体原因写日志
            logger.warning("回调没有得到 HTTP 响应：{}", exc)
            return self._failed(self._attempts(retrying), None, NO_HTTP_RESPONSE)
        except UnsafeCallbackUrl as exc:
            # 投递时解析到了被禁的地址（如 DNS 变了）：不连接、不重试
            message = f"SSRF 防护拒绝：{exc.message}"
            return self._failed(self._attempts(retrying), None, message, permanent=True)
        attempts = self._attempts(retrying)
        logger.info("回调已送达：HTTP {}，第 {} 次尝试", status, attempts)
        return DeliveryOutcome(delivered=True, attempts=attempts, status_code=status)

    async def _refresh_signers(self) -> None:
        if self._secrets_file is None:
            return
        secrets = await self._secrets_file.current()
        if secrets != self._signed_with:
            self._signers = [Webhook(secret) for secret in secrets]
            self._signed_with = secrets
            logger.info("回调签名密钥已换成 {} 把", len(secrets))

    @staticmethod
    def _attempts(retrying: AsyncRetrying) -> int:
        """本轮已做的尝试次数（tenacity 的统计）。"""
        return int(retrying.statistics.get("attempt_number", 0))

    def _headers(self, trace_id: str, body: str) -> dict[str, str]:
        """每次尝试的请求头：webhook-id 固定为 trace_id，签名用本次尝试的时间戳。"""
        message_id = webhook_id(trace_id)
        headers = {
            "Content-Type": "application/json",
            "X-Trace-Id": trace_id,
            "webhook-id": message_id,
        }
        if self._signers:
            now = datetime.now(UTC)
            headers["webhook-timestamp"] = str(int(now.timestamp()))
            # Standard Webhooks：多个签名以空格分隔，接收方逐个比对
            headers["webhook-signature"] = " ".join(
                signer.sign(message_id, now, body) for signer in self._signers
            )
        return headers

    async def _post_once(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        # IP 字面量不经解析器：在这里检查（主机名在连接时由 GuardedResolver 检查）
        self._targets.check_literal(url)
        try:
            async with asyncio.timeout(self._deadline_s):
                # encoded=True：地址原样发出（yarl 默认会把查询串里的 %2F 等解码，
                # 接收方在地址里带的令牌就变了）
                resp = await self._client().post(
                    yarl.URL(url, encoded=True), data=body, headers=headers, allow_redirects=False
                )
        except aiohttp.ClientError as exc:
            # 连接失败、连接 / 读超时、对端中途断开、协议错误都可重试（aiohttp 的超时也是
            # TimeoutError 的子类：先认它，下面的 TimeoutError 只剩整次尝试的时限）
            raise NoResponse(f"{type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            # 当作一次超时（可重试）：接收方慢慢吐字节也占不住投递名额
            raise NoResponse(f"一次尝试超过 {self._deadline_s:g} 秒的总时限") from exc
        drained = False
        try:
            status = resp.status
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            drained = await _drain_small_body(resp)
        finally:
            # 读完的放回池子；没读完的连同连接一起关掉（不能让下一次投递读到这次的残留）
            if drained:
                resp.release()
            else:
                resp.close()
        if 200 <= status < 300:
            return status
        if is_retryable_status(status):
            raise RetryableStatus(status, retry_after)
        raise PermanentStatus(status)

    @staticmethod
    def _failed(
        attempts: int, status_code: int | None, error: str, *, permanent: bool = False
    ) -> DeliveryOutcome:
        logger.warning(
            "本轮回调未送达：尝试 {} 次，最后状态 {}，原因 {}", attempts, status_code, error
        )
        return DeliveryOutcome(
            delivered=False,
            attempts=attempts,
            status_code=status_code,
            error=error,
            permanent=permanent,
        )

    async def aclose(self) -> None:
        """关闭连接池。"""
        if self._session is not None:
            await self._session.close()


def signing_secrets_file(settings: Settings) -> ReloadingSecrets | None:
    """配置了 callback_signing_secret_file 时，它的会重读的内容（回调副本各持一份）。"""
    path = settings.callback_signing_secret_file
    if path is None:
        return None
    return ReloadingSecrets(
        path, check_signing_secrets, interval_s=settings.secret_reload_s, what="回调签名密钥文件"
    )
