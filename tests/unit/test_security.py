"""安全：API key 鉴权、SSRF 防护（不连接任何被拒地址）、输入加固。签名回调发给真实接收方，在
tests/local/test_signed_callbacks.py。"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohappyeyeballs
import httpx
import pytest
from loguru import logger

from serve_app.core.errors import ErrorCode, UnsafeCallbackUrl
from serve_app.core.settings import CallbackPolicy
from serve_app.delivery.client import CallbackClient
from serve_app.delivery.url_guard import CallbackTargetPolicy, HostPattern, classify
from serve_app.http.auth import key_matches
from serve_app.models.reports import DeliveryOutcome, ReportJob
from tests.support.harness import PUBLIC_IP, Harness, public_dns
from tests.support.sample import failed_payload, make_settings, sales_request

FAST = CallbackPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, jitter_s=0.01)
ONE_ATTEMPT = FAST.model_copy(update={"max_attempts": 1})


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """记录并拦下一切向外的 TCP 连接（aiohttp 连接器经 aiohappyeyeballs 建连）：
    被拒的地址连尝试都不应出现。"""
    attempts: list[tuple[str, int]] = []

    async def refuse(addr_infos: list[Any], **_: object) -> object:
        attempts.extend((info[4][0], info[4][1]) for info in addr_infos)
        raise OSError("测试禁止连接")

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", refuse)
    yield attempts


# ---------------------------------------------------------------- 鉴权


def _app(**settings: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return Harness(**settings).serving()


@pytest.fixture
async def secured() -> AsyncIterator[httpx.AsyncClient]:
    async with _app(api_keys="alpha-key,beta-key", auth_required=True) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YWxwaGEta2V5"}],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_v1_requires_a_valid_key(secured: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for method, path in (("POST", "/v1/reports"), ("GET", "/v1/report-types")):
        response = await secured.request(
            method, path, json=sales_request("http://127.0.0.1:9/h"), headers=headers
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == ErrorCode.UNAUTHORIZED
        assert "alpha-key" not in response.text


async def test_any_configured_key_is_accepted(secured: httpx.AsyncClient) -> None:
    for key in ("alpha-key", "beta-key"):
        response = await secured.post(
            "/v1/reports",
            json=sales_request("http://127.0.0.1:9/h"),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 202


async def test_health_endpoints_stay_open(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/healthz")).status_code == 200
    assert (await secured.get("/readyz")).status_code == 200


def test_key_comparison() -> None:
    assert key_matches("b", ("a", "b"))
    assert not key_matches("", ("a",))
    assert not key_matches("a" * 3, ("a",))


# ---------------------------------------------------------------- SSRF


@pytest.fixture
def guard_log() -> Iterator[list[str]]:
    """收集 SSRF 防护写的日志（被拒的详细原因只在这里）。"""
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    yield lines
    logger.remove(sink)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/hook", "http 或 https"),
        ("http://user:pw@127.0.0.1/hook", "用户名或密码"),
    ],
)
async def test_refused_urls_say_what_to_fix(
    url: str, reason: str, no_connect: list[tuple[str, int]]
) -> None:
    policy = CallbackTargetPolicy(resolver=public_dns)
    with pytest.raises(UnsafeCallbackUrl, match=reason):
        await policy.check_url(url)
    assert no_connect == []


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("http://169.254.169.254/latest/meta-data/", "云元数据"),
        ("http://[fe80::1]/hook", "链路本地"),
        ("http://[fd00:ec2::254]/hook", "云元数据"),
        ("http://[::ffff:169.254.169.254]/hook", "云元数据"),
        ("http://[2002:a9fe:a9fe::]/hook", "云元数据"),
        ("http://168.63.129.16/hook", "云元数据"),
        ("http://100.100.100.200/hook", "云元数据"),
        ("http://0.0.0.0:8080/hook", "不可路由"),
        ("http://192.0.0.192/hook", "不可路由"),
        ("http://[fec0::1]/hook", "不可路由"),
        ("http://10.1.2.3/hook", "内网"),
        ("http://192.168.0.10/hook", "内网"),
        ("http://[fd12::1]/hook", "内网"),
        ("http://127.0.0.1:8080/hook", "回环"),
        ("http://[::1]/hook", "回环"),
        ("http://224.0.0.1/hook", "不可路由"),
    ],
)
async def test_refused_targets_say_not_allowed_and_log_why(
    url: str, logged: str, no_connect: list[tuple[str, int]], guard_log: list[str]
) -> None:
    policy = CallbackTargetPolicy(resolver=public_dns)
    with pytest.raises(UnsafeCallbackUrl, match="不是允许的回调地址") as refused:
        await policy.check_url(url)
    # 对调用方不说解析结果（地址、类别），详细原因只在日志里
    assert logged not in refused.value.message
    assert "解析到" not in refused.value.message
    assert any(logged in line for line in guard_log), guard_log
    assert no_connect == []


ADDRESS_TABLE = [
    ("0.1.2.3", "unusable"),
    ("10.1.2.3", "private"),
    ("100.64.0.1", "private"),
    ("127.0.0.2", "loopback"),
    ("169.254.1.1", "link_local"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.192", "unusable"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "unusable"),
    ("198.19.255.255", "unusable"),
    ("224.0.0.1", "unusable"),
    ("240.0.0.1", "unusable"),
    ("255.255.255.255", "unusable"),
    ("::", "unusable"),
    ("::1", "loopback"),
    ("fc00::1", "private"),
    ("fd12::1", "private"),
    ("fe80::1", "link_local"),
    ("fec0::1", "unusable"),
    ("ff02::1", "unusable"),
    # 嵌着 IPv4 的 IPv6：按那个 IPv4 判
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b:1::7f00:1", "loopback"),
    ("2002:a9fe:a9fe::", "metadata"),
    ("2002:a00:1::", "private"),
    ("::7f00:1", "loopback"),
    # 云元数据：无论落在哪个网段
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("168.63.129.16", "metadata"),
    ("100.100.100.200", "metadata"),
    # 公网
    ("93.184.216.34", None),
    ("2606:4700::1111", None),
    ("2002:5db8:d822::", None),
    ("::ffff:93.184.216.34", None),
]


@pytest.mark.parametrize(("address", "category"), ADDRESS_TABLE)
def test_address_table(address: str, category: str | None) -> None:
    # 本项目自己的表：每个解释器上结果相同（不用 ipaddress 的 is_private）
    assert classify(ipaddress.ip_address(address)) == category


@pytest.mark.parametrize(("address", "category"), ADDRESS_TABLE)
def test_what_each_setting_can_open(address: str, category: str | None) -> None:
    host = "hooks.example.com"
    strict = CallbackTargetPolicy()
    wide_open = CallbackTargetPolicy(allow_loopback=True, allow_private=True)
    listed = CallbackTargetPolicy([host])

    def allowed(policy: CallbackTargetPolicy) -> bool:
        try:
            policy.check_ip(host, 443, address)
        except UnsafeCallbackUrl:
            return False
        return True

    assert allowed(strict) == (category is None)
    assert allowed(wide_open) == (category in {None, "loopback", "private"})
    # 白名单放得开内网，放不开回环、链路本地、元数据
    assert allowed(listed) == (category in {None, "private"})


async def _deliver(
    targets: CallbackTargetPolicy, url: str, trace_id: str, policy: CallbackPolicy = FAST
) -> DeliveryOutcome:
    """用一个新的回调客户端投递一次（含重试），关掉客户端，返回结果。"""
    client = CallbackClient(policy, targets)
    try:
        return await client.deliver(url, failed_payload(trace_id))
    finally:
        await client.aclose()


async def test_dns_hiccup_at_delivery_is_retried_not_refused(
    no_connect: list[tuple[str, int]],
) -> None:
    calls = 0

    async def flaky(host: str, port: int) -> list[str]:
        nonlocal calls
        del host, port
        calls += 1
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    outcome = await _deliver(
        CallbackTargetPolicy(resolver=flaky), "http://hooks.example.com/x", "t-dns"
    )
    # 当作网络错误：重试到上限，不标成永久失败（之后还会按重投表再投）
    assert not outcome.delivered and not outcome.permanent
    assert outcome.attempts == FAST.max_attempts == calls
    assert no_connect == []


async def test_unresolvable_name_at_submission_is_a_clear_422() -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        del host, port
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UnsafeCallbackUrl, match="无法解析"):
        await CallbackTargetPolicy(resolver=nxdomain).check_url("https://no-such.example/x")


async def test_allowlist_patterns() -> None:
    policy = CallbackTargetPolicy(
        ["hooks.example.com", "*.corp.example", "api.partner.example:8443"], resolver=public_dns
    )
    await policy.check_url("https://hooks.example.com/x")
    await policy.check_url("https://a.b.corp.example/x")
    await policy.check_url("https://api.partner.example:8443/x")
    for url in (
        "https://corp.example/x",
        "https://evil-corp.example/x",
        "https://api.partner.example/x",
        "https://hooks.example.com.evil.example/x",
    ):
        with pytest.raises(UnsafeCallbackUrl, match="白名单"):
            await policy.check_url(url)
    assert HostPattern.parse("[::1]:8080") == HostPattern("::1", 8080)


async def test_allowlisted_name_resolving_to_metadata_is_refused(guard_log: list[str]) -> None:
    async def to_metadata(host: str, port: int) -> list[str]:
        del host, port
        return [PUBLIC_IP, "169.254.169.254"]

    policy = CallbackTargetPolicy(["hooks.example.com"], resolver=to_metadata)
    with pytest.raises(UnsafeCallbackUrl, match="不是允许的回调地址") as refused:
        await policy.check_url("https://hooks.example.com/x")
    assert "169.254" not in refused.value.message
    assert any("169.254.169.254" in line for line in guard_log)


async def test_submission_refuses_unsafe_callback_with_422() -> None:
    async with _app(callback_allow_loopback=False) as client:
        response = await client.post(
            "/v1/reports", json=sales_request("http://169.254.169.254/latest/meta-data")
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == ErrorCode.UNSAFE_CALLBACK_URL
        response = await client.post("/v1/reports", json=sales_request("http://127.0.0.1:9/h"))
        assert response.status_code == 422
        message = response.json()["error"]["message"]
        # 说该怎么改，不说地址属于哪一类（回环、内网……）
        assert "不是允许的回调地址" in message
        assert "回环" not in message and "解析到" not in message


async def test_delivery_rechecks_the_resolved_address_without_connecting(
    no_connect: list[tuple[str, int]],
) -> None:
    """受理时解析到公网，投递时 DNS 变成元数据地址（DNS rebinding）：拒绝、不重试、不连接。"""
    answers = iter([[PUBLIC_IP], ["169.254.169.254"], ["169.254.169.254"]])

    async def rebinding(host: str, port: int) -> list[str]:
        del host, port
        return next(answers)

    policy = CallbackTargetPolicy(resolver=rebinding)
    await policy.check_url("http://rebind.example/hook")
    outcome = await _deliver(policy, "http://rebind.example/hook", "t-rebind")
    assert not outcome.delivered and outcome.attempts == 1
    assert outcome.error is not None and "SSRF" in outcome.error
    assert no_connect == []


async def test_delivery_connects_to_the_checked_address(
    no_connect: list[tuple[str, int]],
) -> None:
    """放行的主机名：连接的是检查过的那个 IP（而不是再让系统解析一次）。"""
    targets = CallbackTargetPolicy(resolver=public_dns)
    outcome = await _deliver(targets, "http://hooks.example.com:8080/x", "t-pin", ONE_ATTEMPT)
    assert not outcome.delivered
    assert no_connect == [(PUBLIC_IP, 8080)]


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest", "http://[::ffff:127.0.0.1]:8080/x", "http://10.0.0.7/x"],
)
async def test_delivery_to_a_literal_ip_is_checked_without_connecting(
    url: str, no_connect: list[tuple[str, int]]
) -> None:
    """IP 字面量不经解析器（aiohttp 直接连）：投递时照样按地址表拒绝，不重试、不连接。"""
    outcome = await _deliver(CallbackTargetPolicy(resolver=public_dns), url, "t-literal")
    assert not outcome.delivered and outcome.permanent and outcome.attempts == 1, outcome
    assert outcome.error is not None and "SSRF" in outcome.error
    assert no_connect == []


async def test_delivery_to_an_allowed_literal_ip_connects_to_it(
    no_connect: list[tuple[str, int]],
) -> None:
    """放行的 IP 字面量照常连（检查只拦被禁的）。"""
    targets = CallbackTargetPolicy(resolver=public_dns)
    outcome = await _deliver(targets, f"http://{PUBLIC_IP}:8081/x", "t-lit-ok", ONE_ATTEMPT)
    assert not outcome.delivered and not outcome.permanent
    assert no_connect == [(PUBLIC_IP, 8081)]


# ---------------------------------------------------------------- 输入加固


def _nested(depth: int) -> Any:
    """depth 层嵌套的列表（最里面是一个数）。"""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


async def test_deep_nesting_within_the_limit_is_accepted_and_stored() -> None:
    async with _app() as client:
        body = {**sales_request("http://127.0.0.1:9/h"), "metadata": {"deep": _nested(31)}}
        response = await client.post("/v1/reports", json=body)
        assert response.status_code == 202, response.text
        status = await client.get(f"/v1/reports/{response.json()['trace_id']}")
        assert status.status_code == 200


async def test_pathological_nesting_is_a_4xx_not_a_500() -> None:
    async with _app() as client:
        raw = '{"report_type": "sales_weekly", "inputs": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
        response = await client.post(
            "/v1/reports", content=raw, headers={"Content-Type": "application/json"}
        )
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"metadata": {"blob": "x" * 9000}}, "metadata 过大"),
        ({"metadata": {"k" * 80: 1}}, "键名不能超过"),
        ({"max_tokens": 99999}, "max_tokens"),
        ({"inputs": {f"i{n}": "v" for n in range(40)}}, "inputs"),
        ({"inputs": {"deep": _nested(33)}}, "inputs 嵌套超过 32 层"),
        ({"metadata": {"deep": _nested(200)}}, "metadata 嵌套超过 32 层"),
        ({"callback_url": "http://127.0.0.1:9/" + "a" * 2100}, "callback_url 不能超过 2048"),
    ],
)
async def test_hardened_input_limits(overrides: dict[str, Any], expected: str) -> None:
    async with _app() as client:
        body = {**sales_request("http://127.0.0.1:9/h"), **overrides}
        response = await client.post("/v1/reports", json=body)
    assert response.status_code == 422
    assert expected in response.json()["error"]["message"]


async def test_openapi_declares_bearer_auth_only_when_keys_are_configured(
    secured: httpx.AsyncClient,
) -> None:
    schema = (await secured.get("/openapi.json")).json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "401" in schema["paths"]["/v1/reports"]["post"]["responses"]
    async with _app() as open_client:
        open_schema = (await open_client.get("/openapi.json")).json()
    assert "securitySchemes" not in open_schema.get("components", {})
    assert "401" not in open_schema["paths"]["/v1/reports"]["post"]["responses"]


# ---------------------------------------------------------------- 调用方隔离

TENANT_KEYS = {
    "api_keys": "alice:alice-key-1,alice:alice-key-2,bob:bob-key",
    "admin_api_keys": "ops:ops-key",
    "auth_required": True,
}


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_jobs_belong_to_the_caller_that_submitted_them() -> None:
    async with _app(**TENANT_KEYS) as client:
        submitted = await client.post(
            "/v1/reports", json=sales_request("http://127.0.0.1:9/h"), headers=_as("alice-key-1")
        )
        assert submitted.status_code == 202
        trace_id = submitted.json()["trace_id"]
        path = f"/v1/reports/{trace_id}"
        # 同一调用方轮换后的 key、管理员：看得到
        assert (await client.get(path, headers=_as("alice-key-2"))).status_code == 200
        assert (await client.get(path, headers=_as("ops-key"))).status_code == 200
        # 别的调用方：查询、取消、重投一律 404（与不存在的作业没有区别）
        for method, url in (("GET", path), ("DELETE", path), ("POST", f"{path}/redeliver")):
            response = await client.request(method, url, headers=_as("bob-key"))
            assert response.status_code == 404, (method, response.text)
            assert response.json()["error"]["code"] == "not_found"
        # bob 的取消没有生效
        status = (await client.get(path, headers=_as("alice-key-1"))).json()
        assert status["status"] != "cancelled"


async def test_ops_list_is_for_admin_keys_only() -> None:
    async with _app(**TENANT_KEYS) as client:
        refused = await client.get("/v1/ops/undelivered", headers=_as("alice-key-1"))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert "REPORTS_ADMIN_API_KEYS" in refused.json()["error"]["message"]
        allowed = await client.get("/v1/ops/undelivered", headers=_as("ops-key"))
        assert allowed.status_code == 200


async def test_idempotency_is_per_caller_and_survives_key_rotation() -> None:
    async with _app(**TENANT_KEYS) as client:
        body = sales_request("http://127.0.0.1:9/h")

        async def submit(key: str) -> tuple[str, str | None]:
            response = await client.post(
                "/v1/reports", json=body, headers=_as(key) | {"Idempotency-Key": "order-7"}
            )
            assert response.status_code == 202, response.text
            return response.json()["trace_id"], response.headers.get("Idempotent-Replayed")

        first, _ = await submit("alice-key-1")
        rotated, replayed = await submit("alice-key-2")
        assert rotated == first and replayed == "true"
        other, replayed = await submit("bob-key")
        assert other != first and replayed is None


async def test_bare_keys_keep_meaning_one_default_caller() -> None:
    async with _app(api_keys="k-one,k-two", auth_required=True) as client:
        submitted = await client.post(
            "/v1/reports", json=sales_request("http://127.0.0.1:9/h"), headers=_as("k-one")
        )
        trace_id = submitted.json()["trace_id"]
        seen = await client.get(f"/v1/reports/{trace_id}", headers=_as("k-two"))
        assert seen.status_code == 200


def test_a_bad_caller_name_fails_at_startup_without_echoing_the_key() -> None:
    with pytest.raises(ValueError, match="调用方名只能是") as error:
        make_settings(api_keys="bad name:s3cr3t-key", auth_required=True)
    assert "s3cr3t-key" not in str(error.value)


def test_jobs_stored_before_callers_existed_belong_to_default() -> None:
    job = failed_payload("t-old")  # 借它的时间戳
    legacy = {
        "trace_id": "t-old",
        "report_type": "sales_weekly",
        "inputs": {},
        "length": "short",
        "callback_url": "http://127.0.0.1:9/h",
        "created_at": job.created_at.isoformat(),
    }
    assert ReportJob.model_validate(legacy).caller == "default"


def test_each_configured_caller_gets_an_equal_share_of_the_queue() -> None:
    tenants = make_settings(**TENANT_KEYS, jobs={"max_active_jobs": 1000})
    assert tenants.jobs.max_active_per_caller == 500  # alice、bob 各一半（管理员不算）
    single = make_settings(api_keys="k-one,k-two", auth_required=True)
    assert single.jobs.max_active_per_caller is None  # 只有 default：只有全局上限
    explicit = make_settings(**TENANT_KEYS, jobs={"max_active_per_caller": 50})
    assert explicit.jobs.max_active_per_caller == 50
