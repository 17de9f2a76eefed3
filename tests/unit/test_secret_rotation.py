"""不停机轮换：API key 与签名密钥从文件读，文件改了几秒内换上；写坏的文件不换；与环境变量二选一。

回调签名在真实接收方上的证明见 tests/local/test_signed_callbacks.py。
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.core.secret_files import parse_secret_list
from tests.support.files import replace_file
from tests.support.harness import Harness
from tests.support.sample import make_settings, sales_request

CALLBACK = "http://127.0.0.1:9/hooks/reports"


def test_secret_files_take_commas_newlines_and_comments() -> None:
    assert parse_secret_list("# 说明\na:1, b:2\n\n c:3 \n") == ("a:1", "b:2", "c:3")


async def test_a_caller_key_rotates_without_a_restart_and_no_valid_request_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "api-keys"
    path.write_text("acme:old-key\n", encoding="utf-8")
    harness = Harness(
        make_settings(
            api_keys_file=path,
            secret_reload_s=0.05,
            auth_required=True,
            jobs={"sweep_interval_s": 0.05, "drain_timeout_s": 0.2},
        )
    )
    old = {"Authorization": "Bearer old-key"}
    new = {"Authorization": "Bearer new-key"}
    async with harness.serving() as client:

        async def post(headers: dict[str, str]) -> int:
            body = sales_request(CALLBACK)
            response = await client.post("/v1/reports", json=body, headers=headers)
            return response.status_code

        first = await client.post("/v1/reports", json=sales_request(CALLBACK), headers=old)
        assert first.status_code == 202
        assert await post(new) == 401
        # 第一步：加上新 key，旧的还在——两把都能用
        replace_file(path, "acme:new-key\nacme:old-key\n")
        await asyncio.sleep(0.1)
        assert await post(old) == 202 and await post(new) == 202
        # 写坏的文件（调用方名不合法）：不换，两把照旧能用
        replace_file(path, "bad name:new-key\n")
        await asyncio.sleep(0.1)
        assert await post(old) == 202 and await post(new) == 202
        # 第二步：调用方换完了，删掉旧的
        replace_file(path, "acme:new-key\n")
        await asyncio.sleep(0.1)
        assert await post(old) == 401 and await post(new) == 202
        # 新旧 key 是同一个调用方：旧 key 交的作业用新 key 照样查得到
        trace_id = first.json()["trace_id"]
        assert (await client.get(f"/v1/reports/{trace_id}", headers=new)).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_keys": "k1", "api_keys_file": "FILE"}, "REPORTS_API_KEYS 与 REPORTS_API_KEYS_FILE"),
        (
            {"callback_signing_secrets": "whsec_AAAA", "callback_signing_secret_file": "FILE"},
            "CALLBACK_SIGNING_SECRET 与 CALLBACK_SIGNING_SECRET_FILE",
        ),
        ({"api_keys_file": "MISSING"}, "REPORTS_API_KEYS_FILE 读不了"),
        ({"callback_signing_secret_file": "FILE"}, "不是 Standard Webhooks 密钥"),
    ],
)
def test_secret_files_are_checked_at_startup_without_echoing_secrets(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    path = tmp_path / "secrets"
    path.write_text("acme:top-secret-value\n", encoding="utf-8")
    resolved = {
        k: (str(path) if v == "FILE" else str(tmp_path / "nope") if v == "MISSING" else v)
        for k, v in overrides.items()
    }
    with pytest.raises(ValidationError, match=message) as info:
        make_settings(**resolved)
    assert "top-secret-value" not in str(info.value)
