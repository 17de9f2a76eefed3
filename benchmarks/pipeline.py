"""基准：整条流水线（提交 → 回调收到）对比 vLLM 自身的 OpenAI 服务，同样的提示词、并发与生成长度。

    python -m benchmarks.pipeline [--requests 64] [--concurrency 16]

1. 起一个 `vllm` OpenAI 服务（CPU，127.0.0.1，与 serve_config.cpu.yaml 相同的引擎参数），
   以固定并发发 N 个 chat 请求，记 requests/s 与 tokens/s，然后关掉它；
2. 用 cluster/local_run.sh 起整个应用（与 make run 相同），以同样的并发提交 N 份报告
   （“在途”= 已提交、回调未到），记 reports/s（以回调收到为准）；
3. 打印并把结果写到 .run/bench/pipeline-<时间>.json。目标：流水线 ≥ 0.9 × 引擎吞吐。

小模型随机权重、不会生成结束符，每个请求都生成满 max_tokens，两边的工作量相同。只访问 127.0.0.1。
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import httpx

from cluster.build_tiny_model import build_tiny_model
from serve_app.core.settings import PROJECT_ROOT
from serve_app.models.reports import ReportLength
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.renderer import PromptRenderer
from tests.support.receiver import CallbackReceiver
from tests.support.vllm_server import VLLMServer

REPORT_TYPE = "sales_weekly"
LENGTH: ReportLength = "short"
APP_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Run:
    """一组测量。"""

    name: str
    requests: int
    concurrency: int
    seconds: float
    completion_tokens: int

    @property
    def per_second(self) -> float:
        """完成数 / 秒。"""
        return self.requests / self.seconds


def _prompt() -> tuple[list[dict[str, str]], int, dict[str, object]]:
    catalog = TemplateCatalog.from_file(PROJECT_ROOT / "prompts" / "templates.yaml")
    spec = catalog.get(REPORT_TYPE)
    prompt = PromptRenderer(catalog).render(REPORT_TYPE, dict(spec.sample_inputs), LENGTH)
    return prompt.chat_messages(), prompt.max_tokens, dict(spec.sample_inputs)


async def _bench_engine(server: VLLMServer, requests: int, concurrency: int) -> Run:
    messages, max_tokens, _ = _prompt()
    limit = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        async with limit:
            response = await client.post(
                "/chat/completions",
                json={
                    "model": server.served_name,
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "temperature": 0.1,
                },
            )
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=server.base_url, timeout=600) as client:
        await one(client)  # 预热一次，不计时
        tokens = 0
        started = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(requests)))
        seconds = time.perf_counter() - started
    return Run("vllm-openai-server", requests, concurrency, seconds, tokens)


async def _bench_pipeline(requests: int, concurrency: int) -> Run:
    _, _, inputs = _prompt()
    in_flight = asyncio.Semaphore(concurrency)
    with CallbackReceiver() as receiver:

        async def one(client: httpx.AsyncClient) -> int:
            async with in_flight:
                body = {
                    "report_type": REPORT_TYPE,
                    "inputs": inputs,
                    "length": LENGTH,
                    "callback_url": receiver.url,
                }
                response = await client.post("/v1/reports", json=body)
                response.raise_for_status()
                trace_id = response.json()["trace_id"]
                while True:
                    record = receiver.delivered().get(trace_id)
                    if record is not None:
                        assert record.body["status"] == "succeeded", record.body
                        usage: int = record.body["report"]["usage"]["completion_tokens"]
                        return usage
                    await asyncio.sleep(0.01)

        async with httpx.AsyncClient(base_url=APP_URL, timeout=600) as client:
            await one(client)  # 预热一次，不计时
            started = time.perf_counter()
            tokens = await asyncio.gather(*(one(client) for _ in range(requests)))
            seconds = time.perf_counter() - started
    return Run("report-pipeline", requests, concurrency, seconds, sum(tokens))


def _local_run(action: str) -> None:
    subprocess.run(["bash", str(PROJECT_ROOT / "cluster" / "local_run.sh"), action], check=True)


def main(argv: list[str] | None = None) -> int:
    """运行两组测量并输出结果。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    out_dir = PROJECT_ROOT / ".run" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = build_tiny_model(PROJECT_ROOT / ".cache" / "tiny-model")

    server = VLLMServer(model_dir, "tiny", out_dir / "vllm.log", max_model_len=4096)
    server.start()
    try:
        server.wait_ready(600)
        engine = asyncio.run(_bench_engine(server, args.requests, args.concurrency))
    finally:
        server.stop()

    _local_run("start")
    try:
        pipeline = asyncio.run(_bench_pipeline(args.requests, args.concurrency))
    finally:
        _local_run("stop")

    ratio = pipeline.per_second / engine.per_second
    result = {
        "when": datetime.now(UTC).isoformat(),
        "runs": [asdict(engine) | {"per_second": engine.per_second}]
        + [asdict(pipeline) | {"per_second": pipeline.per_second}],
        "pipeline_over_engine": ratio,
        "target": 0.9,
    }
    path = out_dir / f"pipeline-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    for run in (engine, pipeline):
        tokens_per_s = run.completion_tokens / run.seconds
        sys.stdout.write(
            f"{run.name:>20}: {run.per_second:6.2f} 个/秒，{tokens_per_s:8.1f} tokens/秒"
            f"（{run.requests} 个，并发 {run.concurrency}）\n"
        )
    sys.stdout.write(f"流水线 / 引擎 = {ratio:.3f}（目标 ≥ 0.9），结果：{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
