"""零成本引擎：立即回答的 OpenAI 兼容服务（只有 /v1/models 与 /v1/chat/completions）。

用它量控制面自己的开销：引擎不花时间，吞吐与 CPU 全是编排的成本。
用法：python -m benchmarks.zero_engine --port 8100（只监听 127.0.0.1）
"""

from __future__ import annotations

import argparse
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
    """立即给出一个完整的 chat completion。"""
    body = await request.json()
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
    args = parser.parse_args(argv)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
