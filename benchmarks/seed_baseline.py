"""对照组：按最初的设想写的最朴素实现（FastAPI + BackgroundTasks + AsyncOpenAI + httpx 回调）。

没有账本、没有 Ray、没有重试与签名：受理即 202，后台渲染、生成、回调。只用来与本项目的流水线
在同一台机器、同一个引擎上比较控制面的成本。
用法：python -m benchmarks.seed_baseline --port 8200 --engine-url http://127.0.0.1:8100/v1
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import uvicorn
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import JSONResponse
from openai import AsyncOpenAI
from pydantic import BaseModel, JsonValue

from serve_app.core.settings import PROJECT_ROOT
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.renderer import PromptRenderer


class SeedRequest(BaseModel):
    """与 v1 契约相同的请求体。"""

    report_type: str
    inputs: dict[str, JsonValue]
    length: str | None = None
    callback_url: str
    metadata: dict[str, JsonValue] | None = None


def create_app(engine_url: str, model: str = "zero-cost") -> FastAPI:
    """对照组应用：客户端在启动时建一次（与种子设计相同）。"""
    catalog = TemplateCatalog.from_file(PROJECT_ROOT / "prompts" / "templates.yaml")
    renderer = PromptRenderer(catalog)
    llm = AsyncOpenAI(base_url=engine_url, api_key="unused", timeout=600)
    callbacks = httpx.AsyncClient(timeout=30)
    app = FastAPI()

    async def run(trace_id: str, body: SeedRequest) -> None:
        length: Any = body.length or catalog.get(body.report_type).default_length
        prompt = renderer.render(body.report_type, body.inputs, length)
        completion = await llm.chat.completions.create(
            model=model,
            messages=prompt.chat_messages(),  # type: ignore[arg-type]
            max_tokens=prompt.max_tokens,
            temperature=prompt.temperature,
        )
        choice = completion.choices[0]
        usage = completion.usage
        await callbacks.post(
            body.callback_url,
            json={
                "trace_id": trace_id,
                "status": "succeeded",
                "report_type": body.report_type,
                "report": {
                    "content": choice.message.content,
                    "model": completion.model,
                    "finish_reason": choice.finish_reason,
                    "usage": {
                        "prompt_tokens": usage.prompt_tokens if usage else 0,
                        "completion_tokens": usage.completion_tokens if usage else 0,
                    },
                },
                "error": None,
                "metadata": body.metadata,
                "completed_at": datetime.now(UTC).isoformat(),
            },
            headers={"X-Trace-Id": trace_id},
        )

    @app.post("/v1/reports", status_code=202)
    async def submit(body: SeedRequest, background: BackgroundTasks) -> JSONResponse:
        trace_id = str(uuid.uuid4())
        background.add_task(run, trace_id, body)
        return JSONResponse(
            {"trace_id": trace_id, "status": "accepted"},
            status_code=202,
            headers={"X-Trace-Id": trace_id},
        )

    return app


def main(argv: list[str] | None = None) -> int:
    """在 127.0.0.1 上运行。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine-url", required=True)
    parser.add_argument("--model", default="zero-cost", help="引擎上的模型名")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.engine_url, args.model),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
