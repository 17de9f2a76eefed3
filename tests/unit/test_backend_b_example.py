"""examples/backend_b.py：签名校验、重放去重、先答 2xx 再处理。"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from examples.backend_b import create_receiver

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _signed(
    body: dict[str, Any], message_id: str, secret: str = SECRET
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, raw.decode()),
    }
    return raw, headers


async def test_verified_callback_is_handled_once_and_replay_dropped() -> None:
    handled: list[tuple[dict[str, Any], bool]] = []
    app = create_receiver(SECRET, lambda payload, ok: handled.append((payload, ok)))
    raw, headers = _signed({"trace_id": "t-1", "status": "succeeded"}, "msg_t-1")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        first = await client.post("/hooks/reports", content=raw, headers=headers)
        again = await client.post("/hooks/reports", content=raw, headers=headers)
    assert first.status_code == 200 and first.json() == {"ok": True}
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert handled == [({"trace_id": "t-1", "status": "succeeded"}, True)]


async def test_bad_signature_is_401_and_not_handled() -> None:
    handled: list[tuple[dict[str, Any], bool]] = []
    app = create_receiver(SECRET, lambda payload, ok: handled.append((payload, ok)))
    other = "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
    raw, headers = _signed({"trace_id": "t-2"}, "msg_t-2", secret=other)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        response = await client.post("/hooks/reports", content=raw, headers=headers)
    assert response.status_code == 401
    assert handled == []
