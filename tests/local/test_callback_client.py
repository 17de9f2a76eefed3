"""回调客户端与重试策略：对 127.0.0.1 上真实的 HTTP 接收方。"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from serve_app.core.settings import PROJECT_ROOT, CallbackPolicy
from serve_app.delivery.client import NO_HTTP_RESPONSE, CallbackClient, HostSlots
from serve_app.delivery.retry_policy import parse_retry_after
from serve_app.delivery.url_guard import CallbackTargetPolicy
from tests.support.logs import captured_logs
from tests.support.receiver import CallbackReceiver
from tests.support.sample import failed_payload

FAST = CallbackPolicy(
    connect_timeout_s=1.0,
    read_timeout_s=2.0,
    max_attempts=4,
    initial_backoff_s=0.01,
    max_backoff_s=0.05,
    jitter_s=0.01,
)


# 测试接收方都在 127.0.0.1：放行回环（其余 SSRF 规则照常生效）
LOOPBACK_OK = CallbackTargetPolicy(allow_loopback=True)


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[CallbackClient]:
    sender = CallbackClient(FAST, LOOPBACK_OK)
    yield sender
    await sender.aclose()


async def test_500_twice_then_200_is_delivered_once(
    receiver: CallbackReceiver, client: CallbackClient
) -> None:
    receiver.script([500, 503])
    outcome = await client.deliver(receiver.url, failed_payload())
    assert outcome.delivered and outcome.attempts == 3 and outcome.status_code == 200
    statuses = [r.status_returned for r in receiver.received]
    assert statuses == [500, 503, 200]
    assert len(receiver.delivered()) == 1
    last = receiver.received[-1]
    assert last.headers["x-trace-id"] == "t-1"
    assert last.headers["content-type"] == "application/json"
    assert last.body["trace_id"] == "t-1" and last.body["status"] == "failed"


async def test_400_is_not_retried(receiver: CallbackReceiver, client: CallbackClient) -> None:
    receiver.script([400])
    outcome = await client.deliver(receiver.url, failed_payload())
    assert not outcome.delivered and outcome.attempts == 1 and outcome.status_code == 400
    assert len(receiver.received) == 1


@pytest.mark.parametrize("status", [301, 410])
async def test_redirect_and_gone_are_final(
    receiver: CallbackReceiver, client: CallbackClient, status: int
) -> None:
    receiver.script([status])
    outcome = await client.deliver(receiver.url, failed_payload())
    assert not outcome.delivered and outcome.status_code == status
    assert len(receiver.received) == 1


async def test_429_retry_after_is_honoured(
    receiver: CallbackReceiver, client: CallbackClient
) -> None:
    receiver.script([429], retry_after_s=1)
    started = time.monotonic()
    outcome = await client.deliver(receiver.url, failed_payload())
    assert outcome.delivered and outcome.attempts == 2
    assert time.monotonic() - started >= 1.0


async def test_gives_up_after_max_attempts_and_logs(
    receiver: CallbackReceiver, client: CallbackClient
) -> None:
    receiver.script(default_status=502)
    with captured_logs() as logs:
        outcome = await client.deliver(receiver.url, failed_payload())
    assert not outcome.delivered and outcome.attempts == FAST.max_attempts
    assert len(receiver.received) == FAST.max_attempts
    assert any(r["level"] == "WARNING" and "未送达" in r["message"] for r in logs)
    assert not outcome.permanent  # 5xx：交给账本按重投表继续


def _closed_port() -> int:
    """一个刚释放、无人监听的 127.0.0.1 端口：连接会被立即拒绝。"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_receiver_gives_up_and_logs(client: CallbackClient) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/hooks"
    with captured_logs() as logs:
        outcome = await client.deliver(url, failed_payload())
    assert not outcome.delivered
    assert outcome.attempts == FAST.max_attempts
    # 对外只说没有得到 HTTP 响应（不区分端口关着还是开着）；具体原因在日志里
    assert outcome.error == NO_HTTP_RESPONSE
    assert any("ClientConnectorError" in r["message"] for r in logs)
    assert sum("后重试" in r["message"] for r in logs) == FAST.max_attempts - 1
    assert any(r["level"] == "WARNING" and "未送达" in r["message"] for r in logs)


async def test_dropped_connection_is_retried(client: CallbackClient) -> None:
    """接收方读完请求就断开（如 keep-alive 空闲超时的竞争）：重试而非丢失。"""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if connections > 1:
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        outcome = await client.deliver(f"http://127.0.0.1:{port}/", failed_payload())
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.delivered and outcome.attempts == 2 and outcome.status_code == 204


async def test_slow_receiver_times_out_and_is_retried(receiver: CallbackReceiver) -> None:
    policy = FAST.model_copy(update={"read_timeout_s": 0.2, "max_attempts": 2})
    sender = CallbackClient(policy, LOOPBACK_OK)
    receiver.script(delay_s=1.0)
    try:
        with captured_logs() as logs:
            outcome = await sender.deliver(receiver.url, failed_payload())
    finally:
        await sender.aclose()
    assert not outcome.delivered and outcome.attempts == 2
    assert outcome.error == NO_HTTP_RESPONSE
    assert any("SocketTimeoutError" in r["message"] for r in logs)


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_a_receiver_dripping_header_bytes_is_cut_off_at_the_attempt_deadline() -> None:
    """每 0.1 秒吐一个字节的响应头：每次读都没超过 read_timeout，但一次尝试有总时限。"""

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        try:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    policy = FAST.model_copy(
        update={"read_timeout_s": 0.5, "attempt_deadline_s": 1.0, "max_attempts": 2}
    )
    client = CallbackClient(policy, LOOPBACK_OK)
    try:
        started = time.monotonic()
        with captured_logs() as logs:
            url = f"http://127.0.0.1:{port}/hook"
            outcome = await client.deliver(url, failed_payload("t-drip"))
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
        server.close()
    assert not outcome.delivered and outcome.attempts == 2 and not outcome.permanent
    assert outcome.error == NO_HTTP_RESPONSE
    assert any("总时限" in r["message"] for r in logs)
    # 两次尝试各约 1 秒（外加很短的退避）；没有时限时一次就要拖上千秒
    assert elapsed < 4, elapsed


async def test_a_slow_backend_cannot_take_every_delivery_slot(receiver: CallbackReceiver) -> None:
    """同一主机同时在投的有上限：慢主机占满自己的名额，别的主机照常送达。"""

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        writer.close()

    slow = await asyncio.start_server(hang, "127.0.0.1", 0)
    slow_url = f"http://127.0.0.1:{slow.sockets[0].getsockname()[1]}/hook"
    fast_url = receiver.url.replace("127.0.0.1", "localhost")
    policy = FAST.model_copy(
        update={"max_concurrent_per_host": 2, "attempt_deadline_s": 1.0, "max_attempts": 2}
    )
    client = CallbackClient(policy, LOOPBACK_OK)
    try:

        async def timed(url: str, trace_id: str) -> tuple[float, Any]:
            started = time.monotonic()
            outcome = await client.deliver(url, failed_payload(trace_id))
            return time.monotonic() - started, outcome

        results = await asyncio.gather(
            *(timed(slow_url, f"t-slow-{i}") for i in range(3)),
            timed(fast_url, "t-fast"),
        )
    finally:
        await client.aclose()
        slow.close()
    *slow_results, (fast_elapsed, fast_outcome) = results
    assert fast_outcome.delivered and fast_elapsed < 0.9
    outcomes = [outcome for _, outcome in slow_results]
    assert not any(o.delivered for o in outcomes)
    # 两个各占着名额约 2 秒（两次尝试都到时限）；第三个等了一个尝试时限仍没有名额：
    # 这一轮未送达（可重试，没有发出请求）
    full = [o for o in outcomes if o.error and "同时在投的回调已满" in o.error]
    assert len(full) == 1 and full[0].attempts == 0 and not full[0].permanent
    # 投递都结束了：两个主机的名额记录都已回收（地址来自调用方，记录不能只增不减）
    assert len(client.host_slots) == 0


async def test_host_slots_are_reclaimed_when_no_delivery_holds_or_waits() -> None:
    slots = HostSlots(per_host=1)
    assert await slots.acquire("a.example", 1.0)
    # 第二个在等；等到时限没拿到：它的等待不留下记录，持有者的记录还在
    assert not await slots.acquire("a.example", 0.05)
    assert len(slots) == 1
    waiter = asyncio.create_task(slots.acquire("a.example", 5.0))
    await asyncio.sleep(0)
    slots.release("a.example")
    assert await waiter and len(slots) == 1
    slots.release("a.example")
    assert len(slots) == 0
    # 很多不同主机各投一次：结束后一条记录也不剩
    for index in range(100):
        assert await slots.acquire(f"h{index}.example", 1.0)
        slots.release(f"h{index}.example")
    assert len(slots) == 0
    # 等待中被取消（作业被取消、副本关闭）也不留下记录
    assert await slots.acquire("b.example", 1.0)
    cancelled = asyncio.create_task(slots.acquire("b.example", 5.0))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    slots.release("b.example")
    assert len(slots) == 0


async def _keepalive_server(
    host: str, *, delay_s: float, hang: bool = False
) -> tuple[asyncio.Server, str, list[int]]:
    """HTTP/1.1 保持连接的最小接收方：记下接受了几条 TCP 连接；hang 时收到请求后不答。"""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                await asyncio.sleep(30 if hang else delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, host, 0)
    return server, f"http://{host}:{server.sockets[0].getsockname()[1]}/hook", accepted


async def test_connections_to_a_busy_host_are_kept_for_the_next_deliveries() -> None:
    """并发到同一主机的投递用完连接留着给下一轮：响应体读完才归还连接，以前每次投递都重新握手。"""
    server, url, accepted = await _keepalive_server("127.0.0.1", delay_s=0.1)
    client = CallbackClient(FAST, LOOPBACK_OK)
    try:
        for round_ in range(3):
            outcomes = await asyncio.gather(
                *(client.deliver(url, failed_payload(f"t-{round_}-{i}")) for i in range(60))
            )
            assert all(o.delivered for o in outcomes)
    finally:
        await client.aclose()
        server.close()
    # 第一轮开 60 条，之后两轮全部复用（以前是 180 条：不读完的响应关掉时连接跟着关；
    # 池子还只有 10 个连接，60 个投递分批排队）
    assert len(accepted) == 60, len(accepted)


async def test_slow_backends_filling_their_slots_do_not_starve_other_hosts() -> None:
    """两个挂起的主机各占满自己的 64 个名额（共 128 条连接）：第三个主机的回调照常立刻送达。

    以前的连接池总共 10 个连接：池子被慢主机占光，别的调用方的回调在池子里等到超时。
    """
    slow_a, url_a, _ = await _keepalive_server("127.0.0.1", delay_s=0, hang=True)
    slow_b, url_b, _ = await _keepalive_server("127.0.0.2", delay_s=0, hang=True)
    fast, fast_url, _ = await _keepalive_server("127.0.0.3", delay_s=0)
    policy = FAST.model_copy(update={"attempt_deadline_s": 3.0, "max_attempts": 1})
    client = CallbackClient(policy, LOOPBACK_OK)
    try:
        hanging = [
            asyncio.create_task(client.deliver(url, failed_payload(f"t-slow-{i}")))
            for url in (url_a, url_b)
            for i in range(policy.max_concurrent_per_host)
        ]
        await asyncio.sleep(0.5)  # 128 个都连上、发出请求，在等响应
        started = time.monotonic()
        outcome = await client.deliver(fast_url, failed_payload("t-fast"))
        elapsed = time.monotonic() - started
        slow_outcomes = await asyncio.gather(*hanging)
    finally:
        await client.aclose()
        for server in (slow_a, slow_b, fast):
            server.close()
    assert outcome.delivered and elapsed < 0.5, (outcome, elapsed)
    assert not any(o.delivered for o in slow_outcomes)


@pytest.mark.parametrize("body", ["stalled", "huge"])
async def test_a_2xx_counts_whatever_the_response_body_does(body: str) -> None:
    """响应体只为复用连接而读：体停着不来、或大得离谱，2xx 仍算送达、只投一次、不等到尝试时限。"""
    requests: list[int] = []

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        requests.append(1)
        try:
            if body == "stalled":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                await writer.drain()
                await asyncio.sleep(30)
            else:
                size = 10 * 1024 * 1024
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // 65536):
                    writer.write(b"x" * 65536)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    policy = FAST.model_copy(update={"attempt_deadline_s": 10.0})
    client = CallbackClient(policy, LOOPBACK_OK)
    try:
        started = time.monotonic()
        outcome = await client.deliver(url, failed_payload("t-body"))
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
        server.close()
    assert outcome.delivered and outcome.attempts == 1 and outcome.status_code == 200
    assert requests == [1]
    assert elapsed < 3, elapsed


async def test_a_connection_the_receiver_closed_while_idle_is_not_reused() -> None:
    """接收方答完后把保持着的连接关了（没说 Connection: close）：下一次投递换新连接，第一次就送达。

    连接池要认出对端已关的空闲连接：不认的话请求会发到已关的连接上，这一次尝试算失败、多投一次。
    """
    accepted: list[int] = []

    async def answer_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        accepted.append(1)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in head.decode().split("\r\n")
                if line.lower().startswith("content-length:")
            )
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        finally:
            writer.close()

    server = await asyncio.start_server(answer_then_hang_up, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    client = CallbackClient(FAST, LOOPBACK_OK)
    try:
        first = await client.deliver(url, failed_payload("t-first"))
        await asyncio.sleep(0.3)  # 接收方已把那条连接关了，客户端还当它空闲着
        second = await client.deliver(url, failed_payload("t-second"))
    finally:
        await client.aclose()
        server.close()
    assert first.delivered and first.attempts == 1
    assert second.delivered and second.attempts == 1, second
    assert len(accepted) == 2


async def test_the_callback_url_goes_out_exactly_as_given() -> None:
    """查询串里的转义（%2F、%20）原样发出：接收方常在回调地址里带签过的令牌。"""
    lines: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = CallbackClient(FAST, LOOPBACK_OK)
    try:
        url = f"http://127.0.0.1:{port}/hooks/a%2Fb?token=x%2Fy%20z&n=1+2"
        outcome = await client.deliver(url, failed_payload("t-url"))
    finally:
        await client.aclose()
        server.close()
    assert outcome.delivered
    assert lines == [b"POST /hooks/a%2Fb?token=x%2Fy%20z&n=1+2 HTTP/1.1"]


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any] | None = None
) -> x509.Certificate:
    """issuer 为 None 时签 CA 证书（自签）；否则用 (CA 的名字, CA 的私钥) 签 127.0.0.1 的证书。"""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer if issuer is not None else (name, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())


def _private_ca_files(directory: Path) -> tuple[Path, Path, Path]:
    """自己的一个 CA（不在系统的信任列表里）与它给 127.0.0.1 签的服务端证书。

    返回 (CA 证书, 服务端证书, 服务端私钥) 的 PEM 文件：不把 CA 指给客户端时，这张证书不受信任。"""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("测试用的私有 CA", ca_key)
    server = _certificate("127.0.0.1", server_key, issuer=(ca.subject, ca_key))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextlib.asynccontextmanager
async def _https_receiver(tmp_path: Path) -> AsyncIterator[tuple[str, Path, list[bytes]]]:
    """127.0.0.1 上的 HTTPS 接收方（证书由私有 CA 签）：给出 (回调地址, CA 证书, 收到的请求头)。"""
    ca_path, cert_path, key_path = _private_ca_files(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)
    requests: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}/hook", ca_path, requests
    finally:
        server.close()


async def test_an_https_receiver_with_an_untrusted_certificate_gets_nothing(
    tmp_path: Path,
) -> None:
    """HTTPS 回调校验接收方的证书：签发它的 CA 不受信任时握手就失败，请求与报告都不发出，
    按网络错误重试（对外只说没有得到 HTTP 响应，日志里是证书错误）。"""
    client = CallbackClient(FAST.model_copy(update={"max_attempts": 2}), LOOPBACK_OK)
    async with _https_receiver(tmp_path) as (url, _, requests):
        try:
            with captured_logs() as logs:
                outcome = await client.deliver(url, failed_payload())
        finally:
            await client.aclose()
    assert not outcome.delivered and not outcome.permanent and outcome.attempts == 2
    assert outcome.error == NO_HTTP_RESPONSE
    assert any("ClientConnectorCertificateError" in r["message"] for r in logs)
    assert requests == []


# 在新解释器里投递一次：aiohttp 导入时就建好默认的 SSL 上下文，SSL_CERT_FILE 要在导入之前设好
_DELIVER_ONCE = """
import asyncio, sys
from serve_app.core.settings import CallbackPolicy
from serve_app.delivery.client import CallbackClient
from serve_app.delivery.url_guard import CallbackTargetPolicy
from tests.support.sample import failed_payload

async def main() -> None:
    policy = CallbackTargetPolicy(allow_loopback=True)
    client = CallbackClient(CallbackPolicy(max_attempts=1), policy)
    try:
        outcome = await client.deliver(sys.argv[1], failed_payload())
    finally:
        await client.aclose()
    print(outcome.delivered, outcome.status_code, outcome.error)

asyncio.run(main())
"""


async def test_an_https_receiver_signed_by_the_ca_in_ssl_cert_file_gets_the_callback(
    tmp_path: Path,
) -> None:
    """docs/security.md：SSL_CERT_FILE 指向自己的 CA 包时按它校验——私有 CA 签的接收方照常收到回调。
    同一个接收方、不设 SSL_CERT_FILE（上一个测试）时握手失败：这里送达说明信任确实来自这个文件。"""
    async with _https_receiver(tmp_path) as (url, ca_path, requests):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DELIVER_ONCE,
            url,
            cwd=PROJECT_ROOT,
            env={**os.environ, "SSL_CERT_FILE": str(ca_path)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    assert out.decode().split() == ["True", "204", "None"], err.decode()
    assert len(requests) == 1 and requests[0].startswith(b"POST /hook HTTP/1.1")
