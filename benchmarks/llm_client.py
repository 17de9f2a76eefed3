"""外部引擎模式的 LLM 客户端：每个生成请求在入口副本里花多少 CPU，几种写法在同一次运行里交替比。

    python -m benchmarks.llm_client [--requests 3000] [--concurrency 1,16,64] [--rounds 3]

对零成本引擎（benchmarks/zero_engine.py，127.0.0.1 上另一个进程：它的 CPU 不算进来）发同样的
chat 请求（内置报告类型 sales_weekly 渲染出的提示词），只换客户端的写法：
  httpx2-create：AsyncOpenAI 的默认传输（httpx2）+ chat.completions.create（2026-12-06 之前）；
  aiohttp-create：SDK 的 aiohttp 传输（DefaultAioHttpClient）+ chat.completions.create；
  httpx2-post：默认传输 + SDK 的通用 post（请求体原样发，不按 TypedDict 逐字段转换）；
  aiohttp-post：SDK 的 aiohttp 传输 + 通用 post（2026-12-06 下午到晚上的 OpenAICompatClient）；
  today：今天的 OpenAICompatClient.generate（不经 SDK，aiohttp 直发，连同重试与超时的包装）。
每档并发、每种写法交替跑 --rounds 轮，每轮先预热再计 --requests 次，取 CPU ms/请求的中位数。
日志不输出。结果写到 benchmarks/results/llm-client-<时间>.json / .md / .png（--out-dir 改位置），
并更新同目录的 llm-client-latest.*。只访问 127.0.0.1。
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion

from benchmarks.common import (
    ClientReport,
    Close,
    Send,
    client_meta,
    client_parser,
    measure_variant,
    prepare_client_run,
    run_client_benchmark,
)
from serve_app.core.settings import LLMCallPolicy
from serve_app.llm.openai_compat import OpenAICompatClient, chat_body
from serve_app.models.templates import RenderedPrompt
from serve_app.prompting.renderer import PromptRenderer
from tests.support.local_http import free_port
from tests.support.sample import load_catalog

POLICY = LLMCallPolicy()
MODEL = "zero-cost"


def _body() -> tuple[dict[str, Any], RenderedPrompt]:
    """同一份请求：sales_weekly 的示例输入渲染出的提示词，与入口发的请求体相同。"""
    spec = load_catalog().get("sales_weekly")
    prompt = PromptRenderer(load_catalog()).render("sales_weekly", spec.sample_inputs, "short")
    return chat_body(MODEL, prompt, "t-bench", engine_priority=False), prompt


def _sdk(transport: str, call: str) -> Callable[[str], tuple[Send, Close]]:
    """AsyncOpenAI：默认传输或 aiohttp 传输，create 或通用 post。"""

    def make(base_url: str) -> tuple[Send, Close]:
        timeout = openai.Timeout(POLICY.timeout_s, connect=10.0)
        http_client = DefaultAioHttpClient(timeout=timeout) if transport == "aiohttp" else None
        client = AsyncOpenAI(
            base_url=base_url,
            api_key="EMPTY",
            max_retries=0,
            timeout=timeout,
            http_client=http_client,
        )
        body, _ = _body()
        headers = {"X-Request-Id": "t-bench"}
        fields = {k: v for k, v in body.items() if k != "request_id"}

        async def send() -> None:
            if call == "post":
                reply = await client.post(
                    "/chat/completions",
                    cast_to=ChatCompletion,
                    body=body,
                    options={"headers": headers},
                )
            else:
                reply = await client.chat.completions.create(
                    **fields, extra_headers=headers, extra_body={"request_id": "t-bench"}
                )
            if not reply.choices[0].message.content:
                raise RuntimeError("空回答")

        return send, client.close

    return make


def _today(base_url: str) -> tuple[Send, Close]:
    """今天入口副本里的 OpenAICompatClient。"""
    client = OpenAICompatClient(base_url=base_url, api_key="EMPTY", model=MODEL, policy=POLICY)
    _, prompt = _body()

    async def send() -> None:
        completion = await client.generate(prompt, trace_id="t-bench")
        if not completion.content:
            raise RuntimeError("空回答")

    return send, client.aclose


VARIANTS: dict[str, Callable[[str], tuple[Send, Close]]] = {
    "httpx2-create": _sdk("httpx2", "create"),
    "aiohttp-create": _sdk("aiohttp", "create"),
    "httpx2-post": _sdk("httpx2", "post"),
    "aiohttp-post": _sdk("aiohttp", "post"),
    "today": _today,
}

REPORT = ClientReport(
    prefix="llm-client",
    title="外部引擎模式的 LLM 客户端",
    call="请求",
    key="client",
    key_title="写法",
    plot_call="request",
    panels=(("OpenAI SDK variants vs today (aiohttp, no SDK), zero-cost engine", lambda _: True),),
)


def main(argv: list[str] | None = None) -> int:
    """各种写法交替测，打印并保存结果。"""
    args = client_parser(__doc__, "requests", "clients", VARIANTS).parse_args(argv)
    prepare_client_run(args.out_dir)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    meta = client_meta(
        args.requests, args.rounds, "bench-llm-client", argv, openai=openai.__version__
    )
    run_client_benchmark(
        REPORT,
        (["benchmarks.zero_engine", "--port", str(port)], f"{base_url}/models"),
        args.clients.split(","),
        [int(c) for c in args.concurrency.split(",")],
        lambda name, level: measure_variant(VARIANTS, name, base_url, args.requests, level),
        meta,
        args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
