"""OpenAPI 文档即完整契约：规范合法、4xx/5xx 都是统一错误体、回调 webhook、每个类型的示例可提交。"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Mapping
from typing import Any, cast

import httpx
import pytest
from openapi_spec_validator import validate

from tests.support.harness import Harness
from tests.support.sample import load_catalog

_ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture
def spec() -> dict[str, Any]:
    schema: dict[str, Any] = Harness().app.openapi()
    return schema


def _refs(node: Any) -> set[str]:
    """一个 schema 片段里出现的全部 $ref（含 allOf / anyOf 里的）。"""
    if isinstance(node, dict):
        found = {node["$ref"]} if "$ref" in node else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def test_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(cast("Mapping[Hashable, Any]", spec))
    assert spec["openapi"].startswith("3.1")


def test_every_error_response_has_the_error_body(spec: dict[str, Any]) -> None:
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert _ERROR_REF in _refs(schema) or _error_ref_in(spec, schema), (
                    f"{method.upper()} {path} {status} 没有统一错误体"
                )
                checked += 1
    assert checked >= 15


def _error_ref_in(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    """schema 引用的模型里含有 error 字段，且其类型就是 ErrorBody（如 /readyz 的 503）。"""
    for ref in _refs(schema):
        model = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        if "#/components/schemas/ErrorBody" in _refs(model.get("properties", {}).get("error", {})):
            return True
    return False


def test_retry_after_is_documented_on_429_and_503(spec: dict[str, Any]) -> None:
    post = spec["paths"]["/v1/reports"]["post"]["responses"]
    for status in ("429", "503"):
        assert "Retry-After" in post[status]["headers"]


def test_callback_is_documented_as_a_webhook(spec: dict[str, Any]) -> None:
    callback = spec["webhooks"]["report-callback"]["post"]
    body = callback["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == "#/components/schemas/CallbackPayload"
    headers = {p["name"] for p in callback["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature", "X-Trace-Id"}
    assert {"2XX", "410", "429", "5XX"} <= set(callback["responses"])
    payload = spec["components"]["schemas"]["CallbackPayload"]
    assert set(payload["properties"]["status"]["enum"]) == {
        "succeeded",
        "failed",
        "cancelled",
        "expired",
    }


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    await h.aclose()


async def test_one_submittable_example_per_report_type(harness: Harness) -> None:
    spec = harness.app.openapi()
    examples = spec["paths"]["/v1/reports"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    assert set(examples) == set(load_catalog().names)
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for name, example in examples.items():
            body = {**example["value"], "callback_url": "http://127.0.0.1:9/hook"}
            response = await client.post("/v1/reports", json=body)
            assert response.status_code == 202, (name, response.text)
