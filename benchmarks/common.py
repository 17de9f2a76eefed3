"""基准共用的：结果另存为 *-latest.*，每次一个新的账本，起一个小模型的 vLLM 服务，
客户端微基准（每次调用花本进程多少 CPU，几种写法交替测）。"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from cluster.build_tiny_model import build_tiny_model
from serve_app.core.settings import PROJECT_ROOT
from tests.support.local_http import wait_http_ok
from tests.support.vllm_server import VLLMServer

SERVED_NAME = "report-llm"
RESULTS = PROJECT_ROOT / "benchmarks" / "results"
RUN_DIR = PROJECT_ROOT / ".run" / "bench"
# 基准自己与它起的服务都降优先级：机器上别的进程（含测试）不被挤掉
NICE = 15


@dataclass(frozen=True)
class ResultFiles:
    """一次运行的结果文件：<prefix>-<时间>.json / .md / .png，存下后另存为 <prefix>-latest.*。

    时间戳在创建时定下：表的标题常带着它，要在写表之前就有。"""

    prefix: str
    out_dir: Path = RESULTS
    stamp: str = field(default_factory=lambda: f"{datetime.now(UTC):%Y%m%dT%H%M%S}")

    def path(self, suffix: str) -> Path:
        """这次运行的某个结果文件。"""
        return self.out_dir / f"{self.prefix}-{self.stamp}.{suffix}"

    def save(
        self,
        data: dict[str, Any],
        lines: list[str],
        plot: Callable[[Path], None],
        *,
        echo: bool = False,
    ) -> Path:
        """写 JSON、Markdown 表（lines 一行一项）与图，更新 -latest.*；echo 时把表打印出来。
        返回 JSON 的路径。"""
        json_path = self.path("json")
        json_path.write_text(
            json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        text = "\n".join(lines).rstrip("\n") + "\n"
        self.path("md").write_text(text, encoding="utf-8")
        plot(self.path("png"))
        # 另存为 -latest.*（docs 引用带时间的那份）
        for suffix in ("json", "md", "png"):
            shutil.copyfile(self.path(suffix), self.out_dir / f"{self.prefix}-latest.{suffix}")
        if echo:
            sys.stdout.write(text)
        return json_path


def exit_on_sigterm() -> None:
    """SIGTERM 当作 SystemExit(143)：基准被停下时 finally 与 with 照样执行，停掉它起的集群、引擎与
    替身服务（Ray 的 worker 自成进程组，对 make 的进程组发 SIGTERM 停不到它们）。"""
    signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def fresh_ledger(name: str, directory: Path = RUN_DIR) -> Path:
    """基准专用的 SQLite 账本：起应用前删掉上一次的（连同 -wal / -shm），返回路径。

    留着上一次的作业，A/B/A 里后跑的一方面对更大的库；用 make run 的 .run/ledger.sqlite3，
    还会把用户没投完的回调接过来重投。"""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return path


@contextmanager
def tiny_engine(log_name: str) -> Iterator[VLLMServer]:
    """本进程降到 nice 15，生成（或复用）小模型，起一个同样 nice 的 vLLM 服务（127.0.0.1），
    用完经它自己的进程组关掉。"""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.nice(NICE)
    model_dir = build_tiny_model(PROJECT_ROOT / ".cache" / "tiny-model")
    server = VLLMServer(
        model_dir, SERVED_NAME, RUN_DIR / log_name, max_model_len=4096, niceness=NICE
    )
    server.start()
    try:
        server.wait_ready(900)
        yield server
    finally:
        server.stop()


@contextmanager
def local_server(module_args: list[str], ready_url: str) -> Iterator[None]:
    """起 python -m <module_args>（127.0.0.1 上的替身服务，另一个进程），等 ready_url 答 200；
    用完经它自己的 PID 停掉。"""
    server = subprocess.Popen([sys.executable, "-m", *module_args], stdout=subprocess.DEVNULL)
    try:
        wait_http_ok(ready_url, timeout_s=60)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def client_parser(
    doc: str | None, count: str, variants_flag: str, variants: Iterable[str]
) -> argparse.ArgumentParser:
    """客户端微基准共用的参数：--<count>（每轮次数）、--concurrency、--rounds、
    --<variants_flag>（写法）、--out-dir。"""
    names = list(variants)
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument(f"--{count}", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        f"--{variants_flag}", default=",".join(names), help="逗号分隔，取自 " + "、".join(names)
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser


def prepare_client_run(out_dir: Path) -> None:
    """量之前：日志不输出（量的是客户端，不是写日志），降到 nice 15，建好结果目录；
    SIGTERM 时照样收尾。"""
    exit_on_sigterm()
    logger.remove()
    os.nice(NICE)
    out_dir.mkdir(parents=True, exist_ok=True)


def client_meta(
    count: int, rounds: int, target: str, argv: list[str] | None, **versions: str
) -> dict[str, Any]:
    """结果文件里的运行说明：份数、轮数、重跑的命令（带上给的参数）、机器与相关库的版本。"""
    extra = argv if argv is not None else sys.argv[1:]
    return {
        "count": count,
        "rounds": rounds,
        "command": f"make {target}" + (f' ARGS="{" ".join(extra)}"' if extra else ""),
        "machine": f"{os.cpu_count()} 核",
        **versions,
    }


def percentile(values: list[float], q: float) -> float:
    """排好序后第 q 分位的那个值（没有值时为 0）。"""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# 客户端微基准：一次调用（失败时抛异常）与用完关掉客户端
Send = Callable[[], Awaitable[None]]
Close = Callable[[], Awaitable[None]]
WARMUP = 200


async def client_cpu(send: Send, close: Close, count: int, concurrency: int) -> dict[str, float]:
    """一轮：预热后计 count 次调用的本进程 CPU（ms/次）与每秒次数，最后关掉客户端。"""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await send()

    try:
        await asyncio.gather(*(one() for _ in range(WARMUP)))
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await close()
    return {"cpu_ms": cpu / count * 1000, "per_s": count / wall}


def measure_variant(
    variants: dict[str, Callable[[str], tuple[Send, Close]]],
    variant: str,
    target: str,
    count: int,
    concurrency: int,
) -> dict[str, float]:
    """在新的事件循环里量某种写法的一轮：variants[写法](目标地址) 给出一次调用与关闭。"""
    send, close = variants[variant](target)
    return asyncio.run(client_cpu(send, close, count, concurrency))


def alternate(
    variants: list[str],
    levels: list[int],
    rounds: int,
    measure: Callable[[str, int], dict[str, float]],
    key: str,
) -> list[dict[str, Any]]:
    """每档并发里各写法交替测 rounds 轮（机器的起伏落在各写法上一样多），取中位数。

    measure(写法, 并发) 量一轮；每行：concurrency、key（写法）、cpu_ms、per_s、rounds_cpu_ms。"""
    samples: dict[tuple[int, str], list[dict[str, float]]] = {}
    for level in levels:
        for round_ in range(rounds):
            for variant in variants:
                result = measure(variant, level)
                samples.setdefault((level, variant), []).append(result)
                sys.stdout.write(
                    f"并发 {level:>3} 第 {round_ + 1} 轮 {variant:<20} "
                    f"{result['cpu_ms']:.3f} ms CPU/次  {result['per_s']:.0f}/s\n"
                )
    # measure 另给的数（如被调方的 CPU）同样取中位数
    return [
        {
            "concurrency": level,
            key: variant,
            **{name: statistics.median(s[name] for s in runs) for name in runs[0]},
            "rounds_cpu_ms": [s["cpu_ms"] for s in runs],
        }
        for (level, variant), runs in samples.items()
    ]


@dataclass(frozen=True)
class ClientReport:
    """客户端微基准的结果怎么写：文件名前缀、标题、一次调用叫什么、写法那一列，图分几栏。"""

    prefix: str
    title: str
    call: str
    key: str
    key_title: str
    plot_call: str
    # 每栏：(标题, 哪些写法画在这一栏)
    panels: tuple[tuple[str, Callable[[str], bool]], ...]
    # 表里另加的列：(measure 给的键, 列名)
    extra: tuple[tuple[str, str], ...] = ()


def run_client_benchmark(
    report: ClientReport,
    server: tuple[list[str], str],
    variants: list[str],
    levels: list[int],
    measure: Callable[[str, int], dict[str, float]],
    meta: dict[str, Any],
    out_dir: Path,
) -> Path:
    """起替身服务（server：python -m 的参数、就绪地址），各写法交替测若干轮，写出结果。"""
    with local_server(*server):
        rows = alternate(variants, levels, meta["rounds"], measure, key=report.key)
    return write_client_results(report, rows, meta, out_dir)


def write_client_results(
    report: ClientReport, rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path
) -> Path:
    """写出 <prefix>-<时间>.json / .md / .png、另存 -latest.*，打印表；返回 JSON 的路径。"""
    files = ResultFiles(report.prefix, out_dir)
    stamp = files.stamp
    key, call = report.key, report.call
    lines = [
        f"# {report.title}（{stamp}，每档 {meta['count']} 次{call} × {meta['rounds']} 轮，中位数）",
        "",
        f"命令：`{meta['command']}`",
        "",
        f"| 并发 | {report.key_title} | CPU ms/{call} | {call}/秒 | "
        + "".join(f"{title} | " for _, title in report.extra)
        + "各轮 CPU ms |",
        "| ---: | --- | ---: | ---: | " + "---: | " * len(report.extra) + "--- |",
        *(
            f"| {r['concurrency']} | {r[key]} | {r['cpu_ms']:.3f} | {r['per_s']:.0f} | "
            + "".join(f"{r[name]:.3f} | " for name, _ in report.extra)
            + f"{' / '.join(f'{x:.3f}' for x in r['rounds_cpu_ms'])} |"
            for r in rows
        ),
    ]
    return files.save(
        {"meta": meta, "rows": rows}, lines, lambda png: _plot_client(report, rows, png), echo=True
    )


def _plot_client(report: ClientReport, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["concurrency"] for r in rows})
    names = list(dict.fromkeys(r[report.key] for r in rows))
    panels = [(title, [n for n in names if wanted(n)]) for title, wanted in report.panels]
    panels = [(title, group) for title, group in panels if group]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    top = max(r["cpu_ms"] for r in rows) * 1.3
    for ax, (title, group) in zip(axes[0], panels, strict=True):
        width = 0.8 / len(group)
        for i, name in enumerate(group):
            values = {r["concurrency"]: r for r in rows if r[report.key] == name}
            xs = [j + (i - (len(group) - 1) / 2) * width for j in range(len(levels))]
            heights = [values[c]["cpu_ms"] for c in levels]
            ax.bar(xs, heights, width=width, label=name)
            for x, c, h in zip(xs, levels, heights, strict=True):
                label = f"{h:.2f}\n{values[c]['per_s']:.0f}/s"
                ax.text(x, h, label, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(levels)), [f"concurrency {c}" for c in levels])
        ax.set_ylabel(f"client CPU ms per {report.plot_call} (lower is better)")
        ax.set_ylim(0, top)
        ax.set_title(title)
        # 图例放在坐标轴下面：不压住柱子与柱上的数
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1),
            ncol=min(len(group), 5),
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
