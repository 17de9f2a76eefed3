"""签名回调：发给 127.0.0.1 上真实的接收方，用官方 Standard Webhooks 库验签。"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from serve_app.core.secret_files import ReloadingSecrets
from serve_app.core.settings import CallbackPolicy, check_signing_secrets
from serve_app.delivery.client import CallbackClient
from serve_app.delivery.url_guard import CallbackTargetPolicy
from tests.support.files import replace_file
from tests.support.receiver import CallbackReceiver
from tests.support.sample import failed_payload

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = CallbackPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, jitter_s=0.01)


async def test_callbacks_are_signed_and_keep_one_webhook_id_across_retries() -> None:
    with CallbackReceiver() as receiver:
        receiver.script([503])
        client = CallbackClient(FAST, CallbackTargetPolicy(allow_loopback=True), (SECRET,))
        try:
            outcome = await client.deliver(receiver.url, failed_payload("t-signed"))
        finally:
            await client.aclose()
    assert outcome.delivered and outcome.attempts == 2
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_t-signed"
    for record in (first, second):
        body = record.raw.decode()
        # 任何 Standard Webhooks 校验器都能验：这里用官方库
        verified = Webhook(SECRET).verify(body, record.headers)
        assert verified["trace_id"] == "t-signed"
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 32).verify(first.raw.decode(), first.headers)


async def test_unsigned_callbacks_still_carry_webhook_id() -> None:
    with CallbackReceiver() as receiver:
        client = CallbackClient(FAST, CallbackTargetPolicy(allow_loopback=True))
        try:
            await client.deliver(receiver.url, failed_payload("t-plain"))
        finally:
            await client.aclose()
    [record] = receiver.received
    assert record.headers["webhook-id"] == "msg_t-plain"
    assert "webhook-signature" not in record.headers


async def test_during_a_rotation_a_receiver_with_either_secret_verifies_every_callback() -> None:
    """CALLBACK_SIGNING_SECRET=新,旧：每个回调签两次（空格分隔），只认旧密钥的接收方与换了新
    密钥的接收方都验得过；两把都不是的验不过。"""
    new = "whsec_" + "B" * 32
    with CallbackReceiver() as receiver:
        client = CallbackClient(FAST, CallbackTargetPolicy(allow_loopback=True), (new, SECRET))
        try:
            await client.deliver(receiver.url, failed_payload("t-rotating"))
        finally:
            await client.aclose()
    [record] = receiver.received
    assert len(record.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, SECRET):
        assert Webhook(secret).verify(record.raw.decode(), record.headers)["trace_id"]
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "C" * 32).verify(record.raw.decode(), record.headers)


async def test_a_rewritten_secret_file_rotates_signing_without_a_restart(tmp_path: Path) -> None:
    """CALLBACK_SIGNING_SECRET_FILE：文件改成“新,旧”后几秒内每个回调都带两个签名，再改成只有新的，
    旧密钥就验不过了；中途写坏的文件不换（继续用上一份），回调照样签名、照样送达。"""
    new = "whsec_" + "D" * 32
    path = tmp_path / "signing-secrets"
    path.write_text(f"{SECRET}\n", encoding="utf-8")
    secrets = ReloadingSecrets(path, check_signing_secrets, interval_s=0.05)
    with CallbackReceiver() as receiver:
        client = CallbackClient(
            FAST, CallbackTargetPolicy(allow_loopback=True), (SECRET,), secrets_file=secrets
        )
        try:
            await client.deliver(receiver.url, failed_payload("t-old"))
            replace_file(path, f"{new},{SECRET}")
            await asyncio.sleep(0.1)
            await client.deliver(receiver.url, failed_payload("t-both"))
            replace_file(path, "not-a-secret")  # 写坏了：不换
            await asyncio.sleep(0.1)
            await client.deliver(receiver.url, failed_payload("t-broken"))
            replace_file(path, f"# 轮换完成\n{new}\n")
            await asyncio.sleep(0.1)
            await client.deliver(receiver.url, failed_payload("t-new"))
        finally:
            await client.aclose()
    by_id = {r.body["trace_id"]: r for r in receiver.received}
    assert set(by_id) == {"t-old", "t-both", "t-broken", "t-new"}

    def verifies(secret: str, trace_id: str) -> bool:
        record = by_id[trace_id]
        try:
            Webhook(secret).verify(record.raw.decode(), record.headers)
        except Exception:  # noqa: BLE001 - 官方库验不过时抛的异常类型不固定
            return False
        return True

    assert verifies(SECRET, "t-old") and not verifies(new, "t-old")
    for trace_id in ("t-both", "t-broken"):
        assert verifies(SECRET, trace_id) and verifies(new, trace_id)
    assert verifies(new, "t-new") and not verifies(SECRET, "t-new")
