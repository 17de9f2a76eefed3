"""LLM 阶段：超时与重试策略；外部 OpenAI 兼容客户端对 127.0.0.1 上的假服务。"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deployments.handles.serve_llm import EngineFailure, completion_from_reply
from serve_app.core.errors import LLMError, LLMTimeout
from serve_app.core.settings import PROJECT_ROOT, LLMCallPolicy
from serve_app.llm.openai_compat import OpenAICompatClient
from serve_app.llm.port import EngineState, TransientLLMError, call_with_policy
from serve_app.models.reports import Completion, Usage
from serve_app.models.templates import RenderedPrompt
from tests.support.asgi_server import ServedApp
from tests.support.local_http import HangingUpServer

POLICY = LLMCallPolicy(timeout_s=2.0, max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
PROMPT = RenderedPrompt(system="系统", user="用户", max_tokens=16, temperature=0.1, top_p=1.0)
DONE = Completion(
    content="ok", model="m", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1)
)


async def test_transient_errors_are_retried() -> None:
    calls = 0

    async def attempt() -> Completion:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientLLMError("副本不可用")
        return DONE

    assert await call_with_policy(POLICY, attempt) == DONE
    assert calls == 3


async def test_permanent_errors_are_not_retried() -> None:
    calls = 0

    async def attempt() -> Completion:
        nonlocal calls
        calls += 1
        raise LLMError("请求不合法")

    with pytest.raises(LLMError):
        await call_with_policy(POLICY, attempt)
    assert calls == 1


async def test_timeout_becomes_llm_timeout_without_retry() -> None:
    calls = 0

    async def attempt() -> Completion:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)
        return DONE

    policy = POLICY.model_copy(update={"timeout_s": 0.1})
    started = time.monotonic()
    with pytest.raises(LLMTimeout):
        await call_with_policy(policy, attempt)
    assert calls == 1 and time.monotonic() - started < 2


class FakeOpenAIServer:
    """127.0.0.1 上的 OpenAI 兼容假服务：先按脚本返回错误，再返回补全。

    脚本里的 0 表示答 200 却不是 chat 响应。"""

    def __init__(self, failures: list[int]) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        app = Starlette(
            routes=[
                Route("/v1/models", self._models),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )
        self._served = ServedApp(app, "假 OpenAI 服务")
        self.port = self._served.port

    async def _models(self, _: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    async def _chat(self, request: Request) -> JSONResponse:
        self.requests.append((dict(request.headers), await request.json()))
        if self.failures:
            status = self.failures.pop(0)
            if status == 0:
                return JSONResponse({"object": "list", "data": []})
            return JSONResponse({"error": {"message": "boom"}}, status_code=status)
        return JSONResponse(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": "tiny",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "报告"},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25},
            }
        )

    def __enter__(self) -> FakeOpenAIServer:
        self._served.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._served.__exit__(*exc)


@pytest.fixture
def fake_server(request: pytest.FixtureRequest) -> Iterator[FakeOpenAIServer]:
    failures: list[int] = list(getattr(request, "param", []))
    with FakeOpenAIServer(failures) as server:
        yield server


def _client(server: FakeOpenAIServer) -> OpenAICompatClient:
    return OpenAICompatClient(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key="EMPTY", model="", policy=POLICY
    )


@pytest.mark.parametrize("fake_server", [[503, 500]], indirect=True)
async def test_external_client_retries_5xx_and_sends_trace_id(
    fake_server: FakeOpenAIServer,
) -> None:
    client = _client(fake_server)
    try:
        completion = await client.generate(PROMPT, trace_id="trace-xyz")
        assert await client.state() is EngineState.WARM
    finally:
        await client.aclose()
    assert completion.content == "报告" and completion.model == "tiny"
    assert completion.usage.completion_tokens == 16 and completion.finish_reason == "length"
    assert len(fake_server.requests) == 3
    headers, body = fake_server.requests[-1]
    assert headers["x-request-id"] == "trace-xyz"
    assert headers["authorization"] == "Bearer EMPTY"
    assert body["request_id"] == "trace-xyz"
    assert body["model"] == "tiny" and body["max_tokens"] == 16
    assert body["temperature"] == 0.1 and body["top_p"] == 1.0
    assert "response_format" not in body  # 文本报告不约束输出
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


@pytest.mark.parametrize("fake_server", [[400]], indirect=True)
async def test_external_client_does_not_retry_4xx(fake_server: FakeOpenAIServer) -> None:
    client = _client(fake_server)
    try:
        # 消息带上服务端说的原因（OpenAI 形状的 error.message）
        with pytest.raises(LLMError, match="HTTP 400.*boom"):
            await client.generate(PROMPT, trace_id="t")
    finally:
        await client.aclose()
    assert len(fake_server.requests) == 1


@pytest.mark.parametrize("fake_server", [[429, 502]], indirect=True)
async def test_external_client_retries_backpressure(fake_server: FakeOpenAIServer) -> None:
    client = _client(fake_server)
    try:
        completion = await client.generate(PROMPT, trace_id="t")
    finally:
        await client.aclose()
    assert completion.content == "报告" and len(fake_server.requests) == 3


@pytest.mark.parametrize("fake_server", [[0]], indirect=True)
async def test_external_client_rejects_a_reply_that_is_not_a_chat_completion(
    fake_server: FakeOpenAIServer,
) -> None:
    client = _client(fake_server)
    try:
        with pytest.raises(LLMError, match="无法解析") as info:
            await client.generate(PROMPT, trace_id="t")
    finally:
        await client.aclose()
    # 答非所问不是瞬时错误：不重试
    assert not isinstance(info.value, TransientLLMError) and len(fake_server.requests) == 1


async def test_external_client_unreachable_is_not_ready() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAICompatClient(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", model="m", policy=POLICY
    )
    try:
        assert await client.state() is EngineState.DOWN
        with pytest.raises(TransientLLMError, match="暂不可用"):
            await client.generate(PROMPT, trace_id="t")
    finally:
        await client.aclose()


async def test_external_client_retries_a_server_that_hangs_up() -> None:
    """对端读了请求就断开：算连接错误、重试（不是生成超时：超时不重试）。"""
    hangs_up = HangingUpServer(answer_after_s=None)
    async with hangs_up as port:
        client = OpenAICompatClient(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", model="m", policy=POLICY
        )
        try:
            with pytest.raises(TransientLLMError, match="暂不可用") as info:
                await client.generate(PROMPT, trace_id="t")
        finally:
            await client.aclose()
    assert hangs_up.connections == POLICY.max_attempts
    # 消息会进回调的 error.message：不带引擎的地址与端口
    assert "127.0.0.1" not in str(info.value) and str(port) not in str(info.value)


async def test_external_client_times_out_once_on_a_silent_server() -> None:
    """引擎一直不答：超过 timeout_s 算生成超时，不重试。"""
    silent = HangingUpServer(answer_after_s=30)
    policy = POLICY.model_copy(update={"timeout_s": 0.5})
    async with silent as port:
        client = OpenAICompatClient(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", model="m", policy=policy
        )
        started = time.monotonic()
        try:
            with pytest.raises(LLMTimeout):
                await client.generate(PROMPT, trace_id="t")
        finally:
            await client.aclose()
    assert silent.connections == 1 and time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("reply", "raised"),
    [
        (EngineFailure(code=503, message="busy"), TransientLLMError),
        (EngineFailure(code=400, message="too long"), LLMError),
        ("not a reply", LLMError),
    ],
)
def test_llm_replica_replies_map_to_retryable_or_final_errors(
    reply: object, raised: type[Exception]
) -> None:
    with pytest.raises(raised) as info:
        completion_from_reply(reply)
    # 5xx 可重试，4xx 与意外类型不可重试
    assert isinstance(info.value, TransientLLMError) is (raised is TransientLLMError)
    assert completion_from_reply(DONE) is DONE


def test_ingress_side_of_the_llm_handle_does_not_import_vllm() -> None:
    """入口副本加载的模块不导入 vLLM（导入它要约 35 秒 CPU，拖慢每个入口副本的启动）。"""
    # 导入入口模块并构造集群内模式的 LLM 客户端（原来它在构造时导入 vLLM 的协议类）
    probe = (
        "import sys, deployments.ingress;"
        "from deployments.handles.serve_llm import ServeLLMClient;"
        "from serve_app.core.settings import LLMCallPolicy;"
        "ServeLLMClient(None, 'm', LLMCallPolicy());"
        "print(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.'))[:3])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("engine_priority", [False, True])
async def test_external_client_sends_the_priority_only_when_configured(
    fake_server: FakeOpenAIServer, engine_priority: bool
) -> None:
    """没开优先级调度的 vLLM 对非 0 的 priority 答 400：默认不发，打开 engine_priority 才发。"""
    policy = POLICY.model_copy(update={"engine_priority": engine_priority})
    client = OpenAICompatClient(
        base_url=f"http://127.0.0.1:{fake_server.port}/v1",
        api_key="EMPTY",
        model="m",
        policy=policy,
    )
    try:
        await client.generate(PROMPT.model_copy(update={"engine_priority": -1}), trace_id="hi")
        await client.generate(PROMPT, trace_id="normal")
    finally:
        await client.aclose()
    (_, high), (_, normal) = fake_server.requests
    assert high.get("priority") == (-1 if engine_priority else None)
    assert "priority" not in normal  # normal 是 0：哪种引擎都收，不必发
