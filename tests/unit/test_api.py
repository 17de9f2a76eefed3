"""HTTP 契约：校验、202、错误体、类型清单、健康检查（不启动 Ray）。"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from benchmarks.overhead import server_timing
from tests.support.harness import Harness
from tests.support.logs import captured_logs
from tests.support.sample import load_catalog, sales_request

CALLBACK = "http://127.0.0.1:9/hooks/reports"


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    async with harness.serving() as http:
        yield http


def _error(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    assert body["error"]["code"] in {"invalid_request", "payload_too_large"}
    message: str = body["error"]["message"]
    return message


async def test_accepts_and_runs_pipeline(client: httpx.AsyncClient, harness: Harness) -> None:
    response = await client.post("/v1/reports", json=sales_request(CALLBACK))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"
    assert uuid.UUID(body["trace_id"]).version == 4
    assert response.headers["X-Trace-Id"] == body["trace_id"]
    await harness.settle()
    [(url, payload)] = harness.delivery.sent
    assert url == CALLBACK
    assert payload.trace_id == body["trace_id"]
    assert payload.status == "succeeded"
    assert payload.metadata == {"order": 42, "tags": ["周报"]}
    [(trace_id, prompt)] = harness.llm.prompts
    assert trace_id == body["trace_id"]
    assert prompt.max_tokens == load_catalog().get("sales_weekly").lengths["short"].max_tokens


async def test_202_says_how_long_the_app_and_the_ledger_took(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    """Server-Timing：调用方看到的 202 延迟减去 app，就是应用之外排的队（基准据此分解）。"""
    response = await client.post("/v1/reports", json=sales_request(CALLBACK))
    assert response.status_code == 202
    timing = server_timing(response)
    assert set(timing) == {"app", "ledger"}
    assert 0 <= timing["ledger"] <= timing["app"]
    await harness.settle()
    # 被拒的提交也带 app（中间件在最外层）；没写账本就没有 ledger
    rejected = await client.post("/v1/reports", json={"report_type": "nope"})
    assert rejected.status_code == 422
    assert set(server_timing(rejected)) == {"app"}


async def test_each_submission_gets_its_own_trace_id(client: httpx.AsyncClient) -> None:
    ids = {
        (await client.post("/v1/reports", json=sales_request(CALLBACK))).json()["trace_id"]
        for _ in range(3)
    }
    assert len(ids) == 3


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"report_type": "nope"}, "sales_weekly"),
        ({"inputs": {"period": "W47"}}, "缺少必填输入"),
        ({"inputs": {"period": "W47", "region": "r", "sales_data": "d", "x": 1}}, "未知输入"),
        ({"callback_url": "ftp://example.invalid/hook"}, "callback_url"),
        ({"callback_url": "not a url"}, "callback_url"),
        ({"length": "huge"}, "length"),
        ({"surprise": True}, "surprise"),
        ({"report_type": ""}, "report_type"),
        ({"metadata": {f"k{i}": i for i in range(40)}}, "metadata"),
    ],
)
async def test_invalid_requests_get_422_saying_what_to_fix(
    client: httpx.AsyncClient, harness: Harness, overrides: dict[str, Any], expected: str
) -> None:
    response = await client.post("/v1/reports", json={**sales_request(CALLBACK), **overrides})
    assert response.status_code == 422, response.text
    assert expected in _error(response)
    assert harness.delivery.sent == []


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/reports", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    _error(response)


async def test_missing_callback_without_default_is_422(client: httpx.AsyncClient) -> None:
    body = sales_request(CALLBACK)
    del body["callback_url"]
    response = await client.post("/v1/reports", json=body)
    assert response.status_code == 422
    assert "callback_url" in _error(response)


async def test_default_callback_is_used() -> None:
    harness = Harness(default_callback_url="http://127.0.0.1:9/default")
    body = sales_request(CALLBACK)
    del body["callback_url"]
    async with harness.client() as http:
        assert (await http.post("/v1/reports", json=body)).status_code == 202
    await harness.settle()
    await harness.aclose()
    assert harness.delivery.sent[0][0] == "http://127.0.0.1:9/default"


async def test_body_over_limit_is_413(client: httpx.AsyncClient, harness: Harness) -> None:
    limit = harness.services.settings.max_body_bytes
    body = sales_request(CALLBACK, metadata={"blob": "x" * limit})
    response = await client.post("/v1/reports", json=body)
    assert response.status_code == 413
    assert str(limit) in _error(response)
    assert harness.delivery.sent == []


async def test_chunked_body_over_limit_is_413(client: httpx.AsyncClient, harness: Harness) -> None:
    limit = harness.services.settings.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 1024 + 2):
            yield b"x" * 1024

    response = await client.post(
        "/v1/reports", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_report_types_lists_inputs_lengths_and_presets(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/report-types")
    assert response.status_code == 200
    items = {item["name"]: item for item in response.json()}
    assert {"sales_weekly", "customer_feedback", "incident_postmortem", "project_weekly"} <= set(
        items
    )
    for item in items.values():
        assert item["description"]
        assert item["inputs"]
        assert set(item["lengths"]) == {"short", "medium", "long"}
        assert all(v["max_tokens"] > 0 for v in item["lengths"].values())


async def test_health_and_readiness(client: httpx.AsyncClient, harness: Harness) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    harness.llm.is_ready = False
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"


async def test_readiness_waits_for_every_stage_to_have_a_replica(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    """入口起来时渲染、回调副本可能还在初始化：那时 /readyz 说 503 并点名，都起来了才 200。"""
    down = ["TemplateRenderer", "CallbackSender"]

    async def stages_down() -> list[str]:
        return list(down)

    harness.app.state.services = replace(harness.services, stages_down=stages_down)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"
    assert "TemplateRenderer、CallbackSender" in response.json()["error"]["message"]
    down.clear()
    assert (await client.get("/readyz")).json() == {"status": "ready", "llm": "warm"}


async def test_readiness_is_refused_when_stage_status_cannot_be_read(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    """读不到部署状态（控制器不答）时不说就绪：按 ready_timeout_s 放弃，答 503，日志里有原因。"""

    async def hangs() -> list[str]:
        await asyncio.sleep(60)
        return []

    llm = harness.settings.llm.model_copy(update={"ready_timeout_s": 0.05})
    settings = harness.settings.model_copy(update={"llm": llm})
    harness.app.state.services = replace(harness.services, settings=settings, stages_down=hangs)
    with captured_logs() as logs:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "读不到各阶段的部署状态" in response.json()["error"]["message"]
    assert any("读不到各阶段的部署状态" in r["message"] for r in logs)


async def test_openapi_documents_the_contract(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    post = schema["paths"]["/v1/reports"]["post"]
    assert {"202", "413", "422"} <= set(post["responses"])


def _sync_dependencies(dependant: Dependant) -> Iterator[str]:
    """依赖树里的同步可调用对象：FastAPI 把它们放进线程池，每个请求多两次线程交接。"""
    for dependency in dependant.dependencies:
        call = dependency.call
        if call is not None and not (
            inspect.iscoroutinefunction(call)
            # 类的实例（如 HTTPBearer）：看它的 __call__
            or inspect.iscoroutinefunction(type(call).__call__)
        ):
            yield getattr(call, "__qualname__", repr(call))
        yield from _sync_dependencies(dependency)


async def test_no_dependency_runs_in_a_threadpool() -> None:
    harness = Harness(api_keys="alice:alice-key", admin_api_keys="ops:ops-key", auth_required=True)
    try:
        found = {
            f"{route.path}: {name}"
            for route in harness.app.routes
            if isinstance(route, APIRoute)
            for name in _sync_dependencies(route.dependant)
        }
        assert any(
            isinstance(route, APIRoute) and route.path.startswith("/v1/ops")
            for route in harness.app.routes
        )
        assert found == set()
    finally:
        await harness.aclose()
