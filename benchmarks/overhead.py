"""控制面开销基准：零成本引擎上，对照组（朴素实现）与本项目流水线并排测量。

    python -m benchmarks.overhead [--reports 600] [--concurrency 1,8,32,64] [--idle-gap-ms 20]

1. 起零成本引擎（benchmarks/zero_engine.py，立即回答的 OpenAI 兼容服务）；
2. 对照组（benchmarks/seed_baseline.py）：各并发下提交 N 份报告，记 reports/s（以回调收到为准）、
   202 的 p50/p99、提交 → 回调收到的 p50，以及进程 CPU 时间 / 报告；
3. 流水线：cluster/local_run.sh 以外部引擎模式起整个应用（与 make run 同一套脚本），同样测量，
   CPU 按副本（ReportIngress、Ledger、TemplateRenderer、CallbackSender、Serve 代理）分开记；
   两组闭环各档之后都再测孤立的请求（并发 1，每份之前空闲 --idle-gap-ms）：一个接一个时机器
   一直醒着，孤立的一份要等各进程被唤醒——backend B 偶尔交一份时看到的是后者；
4. 结果写到 benchmarks/results/：overhead-<时间>.json / .md / .png，并更新 overhead-latest.*。

所有进程（含本进程）以 nice 15 运行，与 Ray 的 worker 同级，谁也不饿着谁。只访问 127.0.0.1。
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.common import (
    NICE,
    RESULTS,
    RUN_DIR,
    ResultFiles,
    exit_on_sigterm,
    fresh_ledger,
    percentile,
)
from serve_app.core.settings import PROJECT_ROOT
from tests.support.local_http import free_port, wait_http_ok

APP_URL = "http://127.0.0.1:8000"
# 流水线各副本的进程标题（Ray 把 actor 名写进进程标题）
REPLICAS = ("ReportIngress", "Ledger", "TemplateRenderer", "CallbackSender")
# HTTP 入口那一站：Serve 的 Python 代理，或 HAProxy 模式下的 HAProxyManager 与 haproxy 进程
PROXY_TITLES = ("ray::ProxyActor", "ray::HAProxyManager")
# --serve-mode：节点进程的 Serve 环境变量（经 make run 的 head 进程传给 Ray 的各个进程）
# （默认值见 cluster/ray_env.sh：吞吐模式）
SERVE_MODES: dict[str, dict[str, str]] = {
    # Serve 的吞吐优化模式（直连入口、句柄默认 gRPC、用户代码与路由器在副本主循环、访问日志缓冲、
    # 启动后冻结 GC）加 HAProxy 取代 Python 代理（直连入口要它在前面分发）
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    # 经典模式：Python 代理收 HTTP，经一次 Ray 调用交给入口副本
    "classic": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
}
# 对照组（seed_baseline.py）在结果里的名字：别的系统都与它并排比
SEED = "seed-baseline"
REQUEST = {
    "report_type": "sales_weekly",
    "inputs": {
        "period": "2026-11-16 至 2026-11-22",
        "region": "华东区",
        "sales_data": "销售额 320 万元",
    },
    "length": "short",
    "metadata": {"bench": True},
}


@dataclass
class Measurement:
    """一个系统在一个并发下的测量。"""

    system: str
    concurrency: int
    reports: int
    seconds: float
    lost: int
    accept_p50_ms: float
    accept_p99_ms: float
    e2e_p50_ms: float
    # 回调超过时限才到（跑完后又等到了）：不算丢失，也不算进吞吐
    late: int = 0
    cpu_ms_per_report: dict[str, float] = field(default_factory=dict)
    # 开环一批时 202 的 Server-Timing（app = 应用里的时间，ledger = 写账本）的 p50 / p99 毫秒
    server_timing_ms: dict[str, float] = field(default_factory=dict)
    # 开环定速（份/秒）；0 = 尽快交（受 64 个连接所限）
    rate: float = 0.0
    # 闭环里每份报告交出之前空闲的毫秒（0 = 上一份的回调一到就交下一份）
    gap_ms: float = 0.0

    @property
    def per_second(self) -> float:
        """时限内收到回调的报告数 / 秒。"""
        return (self.reports - self.lost - self.late) / self.seconds


class CallbackSink:
    """同一事件循环里的回调接收方：按 trace_id 唤醒等待者。"""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._early: dict[str, float] = {}
        app = Starlette(routes=[Route("/hooks", self._receive, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def _receive(self, request: Request) -> Response:
        trace_id = request.headers.get("x-trace-id", "")
        now = time.perf_counter()
        waiter = self._waiters.get(trace_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        else:
            self._early[trace_id] = now
        return Response(status_code=200)

    def expect(self, trace_id: str) -> asyncio.Future[float]:
        """trace_id 的回调到达时刻（perf_counter）。"""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if trace_id in self._early:
            future.set_result(self._early.pop(trace_id))
        self._waiters[trace_id] = future
        return future

    async def __aenter__(self) -> CallbackSink:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


def server_timing(response: httpx.Response) -> dict[str, float]:
    """`Server-Timing: app;dur=1.2, ledger;dur=0.8` → {"app": 1.2, "ledger": 0.8}（对照组没有）。"""
    timings: dict[str, float] = {}
    for header in response.headers.get_list("server-timing", split_commas=True):
        name, _, params = header.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                timings[name] = float(value)
    return timings


async def _drive(
    base_url: str,
    reports: int,
    concurrency: int,
    timeout_s: float,
    grace_s: float = 300,
    gap_s: float = 0.0,
) -> dict[str, Any]:
    """以固定并发（在途 = 已提交、回调未到）提交 reports 份报告。

    gap_s > 0 时每份交出之前先空闲这么久（占着名额）：并发 1 时就是孤立的请求——各进程已睡下，
    backend B 偶尔交一份报告时等的是这个；一个接一个时机器一直醒着，量到的比孤立的请求快。

    回调 timeout_s 内没到的先让出名额（算进 late 或 lost），跑完后再给它们 grace_s：到了的记 late
    （迟到，不是丢失），仍没到的才是 lost。以前两者都记成 lost。
    """
    accept_ms: list[float] = []
    e2e_ms: list[float] = []
    overdue: list[asyncio.Future[float]] = []
    refused = 0
    async with CallbackSink() as sink, httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        body = {**REQUEST, "callback_url": sink.url}
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            nonlocal refused
            async with slots:
                if gap_s:
                    await asyncio.sleep(gap_s)
                began = time.perf_counter()
                response = await client.post("/v1/reports", json=body)
                accepted = time.perf_counter()
                if response.status_code != 202:
                    refused += 1
                    return
                accept_ms.append((accepted - began) * 1000)
                arrival = sink.expect(response.json()["trace_id"])
                try:
                    arrived = await asyncio.wait_for(asyncio.shield(arrival), timeout_s)
                except TimeoutError:
                    overdue.append(arrival)
                    return
                e2e_ms.append((arrived - began) * 1000)

        for _ in range(min(20, reports)):  # 预热：建连接、各副本第一次调用
            await one()
        accept_ms.clear()
        e2e_ms.clear()
        overdue.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(reports)))
        seconds = time.perf_counter() - started
        if overdue:
            await asyncio.wait(overdue, timeout=grace_s)
        late = sum(1 for f in overdue if f.done())
    return {
        "seconds": seconds,
        "lost": refused + len(overdue) - late,
        "late": late,
        "accept_p50_ms": percentile(accept_ms, 0.5),
        "accept_p99_ms": percentile(accept_ms, 0.99),
        "e2e_p50_ms": percentile(e2e_ms, 0.5),
    }


async def _batch(
    base_url: str, reports: int, submitters: int, timeout_s: float, rate: float = 0.0
) -> dict[str, Any]:
    """开环的一批：reports 份以 submitters 个并发连接尽快交上（429 按 Retry-After 再交），
    不等回调；吞吐 = 份数 ÷（第一个 202 → 最后一个回调）。backend B 的夜间批量就是这样用的。

    尽快交时 64 个连接各自交完一份才交下一份，`202` 的延迟由利特尔定律定死：64 ÷ 受理速率
    （每秒受理 120 份就是约 0.5 s），量的是受理的吞吐而不是排队。rate > 0 时改为定速：第 i 份在
    i / rate 秒时交出，不等前面的答复——速率低于受理能力时，`202` 的延迟才是“引擎满载时受理
    排在后台工作后面多久”。"""
    accept_ms: list[float] = []
    timings: dict[str, list[float]] = {}
    arrivals: list[asyncio.Future[float]] = []
    first_accept: list[float] = []
    # 同时在途的提交：尽快交时是连接数；定速时不设限（每份到点就交）
    in_flight = submitters if rate <= 0 else reports
    async with (
        CallbackSink() as sink,
        httpx.AsyncClient(
            base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=in_flight)
        ) as client,
    ):
        body = {**REQUEST, "callback_url": sink.url}
        slots = asyncio.Semaphore(in_flight)

        async def submit() -> None:
            async with slots:
                while True:
                    began = time.perf_counter()
                    response = await client.post("/v1/reports", json=body)
                    if response.status_code != 429:
                        break
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                accepted = time.perf_counter()
                response.raise_for_status()
                first_accept.append(accepted)
                accept_ms.append((accepted - began) * 1000)
                for name, ms in server_timing(response).items():
                    timings.setdefault(name, []).append(ms)
                arrivals.append(sink.expect(response.json()["trace_id"]))

        await asyncio.gather(*(submit() for _ in range(min(20, reports))))  # 预热
        await asyncio.wait(arrivals, timeout=timeout_s)
        accept_ms.clear()
        timings.clear()
        arrivals.clear()
        first_accept.clear()
        if rate <= 0:
            await asyncio.gather(*(submit() for _ in range(reports)))
        else:
            start = time.perf_counter()
            tasks = []
            for i in range(reports):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(submit()))
            await asyncio.gather(*tasks)
        submitted = time.perf_counter()
        await asyncio.wait(arrivals, timeout=timeout_s)
        done = [f.result() for f in arrivals if f.done()]
    began_at = min(first_accept)
    seconds = (max(done) - began_at) if done else float("inf")
    return {
        "seconds": seconds,
        "submit_seconds": submitted - began_at,
        "lost": reports - len(done),
        "accept_p50_ms": percentile(accept_ms, 0.5),
        "accept_p99_ms": percentile(accept_ms, 0.99),
        "e2e_p50_ms": 0.0,
        "server_timing_ms": {
            f"{name}_{label}": round(percentile(values, q), 1)
            for name, values in sorted(timings.items())
            for label, q in (("p50", 0.5), ("p99", 0.99))
        },
    }


def measure_batch(
    system: str,
    base_url: str,
    reports: int,
    processes: dict[str, list[psutil.Process]],
    submitters: int = 64,
    rate: float = 0.0,
) -> Measurement:
    """开环一批的吞吐、202 延迟与各副本的 CPU（concurrency 记为 0 = 开环；rate > 0 为定速）。"""
    before = _cpu_seconds(processes)
    result = asyncio.run(
        _batch(base_url, reports, submitters, timeout_s=reports + 300.0, rate=rate)
    )
    after = _cpu_seconds(processes)
    done = max(1, reports - result["lost"])
    cpu = {name: round((after[name] - before[name]) * 1000 / done, 2) for name in processes}
    submit_seconds = result.pop("submit_seconds")
    measurement = Measurement(system, 0, reports, cpu_ms_per_report=cpu, rate=rate, **result)
    pace = f"定速 {rate:g}/s" if rate > 0 else "尽快"
    sys.stdout.write(
        f"{system:>14} 开环 {reports} 份（{pace}）：{measurement.per_second:7.2f} 个/秒（交完用了 "
        f"{submit_seconds:.1f} s）  202 p50 {measurement.accept_p50_ms:6.1f} ms "
        f"p99 {measurement.accept_p99_ms:6.1f} ms  应用里 {measurement.server_timing_ms}  "
        f"lost={measurement.lost}  CPU ms/报告 {cpu}\n"
    )
    sys.stdout.flush()
    return measurement


def _cpu_seconds(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for name, procs in processes.items():
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        totals[name] = total
    return totals


def _measure(
    system: str,
    base_url: str,
    reports: int,
    concurrency: int,
    processes: dict[str, list[psutil.Process]],
    gap_ms: float = 0.0,
) -> Measurement:
    before = _cpu_seconds(processes)
    result = asyncio.run(_drive(base_url, reports, concurrency, timeout_s=120, gap_s=gap_ms / 1000))
    after = _cpu_seconds(processes)
    done = max(1, reports - result["lost"] - result["late"])
    cpu = {name: round((after[name] - before[name]) * 1000 / done, 2) for name in processes}
    measurement = Measurement(
        system, concurrency, reports, cpu_ms_per_report=cpu, gap_ms=gap_ms, **result
    )
    sys.stdout.write(
        f"{system:>14} {_load_label(measurement):<14} {measurement.per_second:7.1f} 个/秒  "
        f"202 p50 {measurement.accept_p50_ms:6.1f} ms p99 {measurement.accept_p99_ms:6.1f} ms  "
        f"e2e p50 {measurement.e2e_p50_ms:6.1f} ms  "
        f"late={measurement.late} lost={measurement.lost}  CPU ms/报告 {cpu}\n"
    )
    sys.stdout.flush()
    return measurement


@contextmanager
def _companion(module: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """以 nice 15 起一个本仓库的 Python 模块，退出时经自己的 PID 关闭。"""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    log = (RUN_DIR / f"{module.rsplit('.', 1)[-1]}.log").open("ab")
    process = subprocess.Popen(
        ["nice", "-n", str(NICE), sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _pipeline_config(ingress_replicas: int | None = None) -> Path:
    """make run 的 CPU 配置改成外部引擎模式（去掉 LLMServer），写到 .run/bench/；
    给了 ingress_replicas 时入口固定为这么多个副本（min = max）。"""
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.cpu.yaml").read_text(encoding="utf-8"))
    app = config["applications"][0]
    app["args"]["llm_mode"] = "external"
    app["args"].pop("engine", None)
    app["deployments"] = [d for d in app["deployments"] if not d["name"].startswith("LLMServer")]
    for deployment in app["deployments"]:
        if deployment["name"] == "ReportIngress" and ingress_replicas is not None:
            deployment["autoscaling_config"] |= {
                "min_replicas": ingress_replicas,
                "max_replicas": ingress_replicas,
            }
    path = RUN_DIR / "serve_config.overhead.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _replica_processes() -> dict[str, list[psutil.Process]]:
    found: dict[str, list[psutil.Process]] = {name: [] for name in (*REPLICAS, "proxy")}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        title = " ".join(cmdline)
        if title.startswith(PROXY_TITLES) or (cmdline and Path(cmdline[0]).name == "haproxy"):
            found["proxy"].append(proc)
            continue
        for name in REPLICAS:
            if title.startswith("ray::") and name in title:
                found[name].append(proc)
    return found


@contextmanager
def _pipeline(
    engine_url: str,
    ledger_url: str | None = None,
    ingress_replicas: int | None = None,
    handle_transport: str = "grpc",
    serve_mode: str = "throughput",
) -> Iterator[dict[str, list[psutil.Process]]]:
    """make run 的方式起流水线（外部引擎模式）；ledger_url 给出时账本用 Postgres。

    handle_transport：入口 → 渲染 / 回调 / 账本的句柄传输（Settings.handle_transport）；
    serve_mode：SERVE_MODES 里的一组 Serve 环境变量。
    """
    env = {
        **os.environ,
        **SERVE_MODES[serve_mode],
        "REPORTS_HANDLE_TRANSPORT": handle_transport,
        "SERVE_CONFIG": str(_pipeline_config(ingress_replicas).relative_to(PROJECT_ROOT)),
        "VLLM_API_URL": engine_url,
        "REPORTS_ENGINE__MODEL_SOURCE": "unused-in-external-mode",
        "REPORTS_JOBS__LEDGER_PATH": str(fresh_ledger("ledger-overhead.sqlite3")),
    }
    if ledger_url is not None:
        env["REPORTS_JOBS__LEDGER_URL"] = ledger_url
    script = str(PROJECT_ROOT / "cluster" / "local_run.sh")
    # Ray 自己把 worker 设成 nice 15；head 的进程不再额外加
    subprocess.run(["bash", script, "start"], env=env, check=True)
    try:
        yield _replica_processes()
    finally:
        subprocess.run(["bash", script, "stop"], env=env, check=False)


# --profiler 的两种采样器：py-spy 看 Python 的栈（只看得到 Python 帧）；perf 按 CPU 时钟采整个进程，
# 含解释器、C 扩展、gRPC 与内核（py-spy 的 --nonblocking 采样与 psutil 的 CPU 对不上时看它）
PROFILERS = ("py-spy", "perf")


def _profiler_command(tool: str, pid: int, out_dir: Path) -> tuple[list[str], Path]:
    """采样入口副本的命令与它写出的文件。"""
    if tool == "perf":
        out = out_dir / "ingress-perf.data"
        return ["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(pid)], out
    py_spy = Path(sys.executable).with_name("py-spy")
    out = out_dir / "ingress-flame.svg"
    return [str(py_spy), "record", "-p", str(pid), "-r", "100", "--nonblocking"], out


def _perf_summary(data: Path) -> Path:
    """perf 的采样按共享库与按符号各汇总一次（自身占比，不展开调用栈），写成一个文本文件。"""
    summary = data.with_suffix(".txt")
    if not data.exists():
        why = "perf 没有写出采样（权限不够？见 /proc/sys/kernel/perf_event_paranoid）"
        summary.write_text(why + "\n", encoding="utf-8")
        return summary
    sections = []
    for sort in ("dso", "sym"):
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none"]
            + ["--sort", sort],
            capture_output=True,
            text=True,
            check=False,
        )
        rows = [line for line in report.stdout.splitlines() if line and not line.startswith("#")]
        sections.append(f"## 按 {sort}（前 40）\n" + "\n".join(rows[:40]))
    summary.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return summary


@contextmanager
def sample_ingress(
    ingress: list[psutil.Process],
    *,
    enabled: bool,
    out_dir: Path = RESULTS,
    tool: str = "py-spy",
) -> Iterator[None]:
    """采样入口副本（测量期间），结束时把结果写到 out_dir；经采样器自己的 PID 停止它。"""
    if not enabled:
        yield
        return
    [replica] = ingress
    command, out = _profiler_command(tool, replica.pid, out_dir)
    spy = subprocess.Popen([*command, "-o", str(out)], stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        # SIGINT：采样器停止采样并写出文件
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        if tool == "perf":
            out = _perf_summary(out)
        sys.stdout.write(f"入口副本的采样：{out}\n")


def _write_results(
    measurements: list[Measurement],
    reports: int,
    options: dict[str, Any] | None = None,
    out_dir: Path = RESULTS,
) -> Path:
    rows = [asdict(m) | {"per_second": round(m.per_second, 1)} for m in measurements]
    data = {
        "when": datetime.now(UTC).isoformat(),
        "reports": reports,
        "options": options or {},
        "runs": rows,
    }
    lines = [
        "| 系统 | 并发 | 报告/秒 | 202 p50 ms | 202 p99 ms | 提交→回调 p50 ms | 丢失 "
        "| CPU ms/报告 | 202 在应用里 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for m in measurements:
        cpu = "、".join(f"{k} {v}" for k, v in m.cpu_ms_per_report.items())
        timing = "、".join(f"{k} {v}" for k, v in m.server_timing_ms.items())
        lines.append(
            f"| {m.system} | {_level(m)} | {m.per_second:.1f} | {m.accept_p50_ms:.1f} | "
            f"{m.accept_p99_ms:.1f} | {m.e2e_p50_ms:.1f} | {m.lost} | {cpu} | {timing} |"
        )
    lines += side_by_side(measurements)
    return ResultFiles("overhead", out_dir).save(data, lines, lambda png: _plot(measurements, png))


def _level(m: Measurement) -> str:
    """一档负载在表里的名字：并发（每份前空闲时带上间隔）、开环一批、开环定速。"""
    if m.concurrency == 0:
        return f"开环 {m.reports}" + (f" @ {m.rate:g}/s" if m.rate > 0 else "")
    return str(m.concurrency) + (f"，每份前空闲 {m.gap_ms:g} ms" if m.gap_ms else "")


def control_plane_cpu_ms(m: Measurement) -> float:
    """各部署（含 HAProxy、Postgres）合计的 CPU ms/报告：零成本引擎不是控制面，不算。"""
    return sum(v for k, v in m.cpu_ms_per_report.items() if k != "engine")


def _controls(measurements: list[Measurement]) -> dict[str, Measurement]:
    """每档负载（按 _load_label）对照组的那次测量。"""
    return {_load_label(m): m for m in measurements if m.system == SEED}


def _ratio(m: Measurement, control: Measurement | None) -> float | None:
    """报告/秒是对照组的几倍；没测对照组、对照组为 0 或每份前空闲的那档（报告/秒主要是空闲的
    间隔，倍数没有意义）为 None。"""
    if control is None or not control.per_second or m.gap_ms:
        return None
    return m.per_second / control.per_second


def side_by_side(measurements: list[Measurement]) -> list[str]:
    """每个系统与同一次运行、同一档负载的对照组并排：issue #27 第 3 条要的三个数——报告/秒是对照组的
    几倍、提交 → 回调 p50 多出几毫秒、控制面合计 CPU ms/报告。没测对照组时为空。"""
    seed = _controls(measurements)
    rows = [
        (m, seed[_load_label(m)])
        for m in measurements
        if m.system != SEED and _load_label(m) in seed
    ]
    if not rows:
        return []
    lines = [
        "",
        "与同一次运行、同一档的对照组并排：",
        "",
        "| 系统 | 并发 | 报告/秒 ÷ 对照组 | 提交→回调 p50 多出 ms | 控制面合计 CPU ms/报告 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m, control in rows:
        ratio = "—" if (r := _ratio(m, control)) is None else f"{r:.2f}"
        lines.append(
            f"| {m.system} | {_level(m)} | {ratio} | {m.e2e_p50_ms - control.e2e_p50_ms:.1f} | "
            f"{control_plane_cpu_ms(m):.1f} |"
        )
    return lines


def _load_label(m: Measurement) -> str:
    """一档负载在图上的名字：闭环并发（每份前空闲时带上间隔）、开环尽快交、开环定速。"""
    if m.concurrency > 0:
        return f"C={m.concurrency}" + (f" idle {m.gap_ms:g}ms" if m.gap_ms else "")
    return f"{m.reports} @ {m.rate:g}/s" if m.rate > 0 else f"batch {m.reports}"


def _plot(measurements: list[Measurement], path: Path) -> None:
    """左：报告/秒（柱上写相对对照组的倍数）；中：202 p99（对数轴，虚线是 issue #27 的 100 ms）；
    右：提交 → 回调 p50（对数轴；并发 1 时减去对照组即“多出的延迟”）。

    每档负载一组柱，闭环、开环一批、定速都画；图例放在图外，不压住柱子。"""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    loads = list(dict.fromkeys(_load_label(m) for m in measurements))
    systems = list(dict.fromkeys(m.system for m in measurements))
    at = {(m.system, _load_label(m)): m for m in measurements}
    seed = _controls(measurements)
    fig, (left, right, latency) = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / len(systems)
    for index, system in enumerate(systems):
        present = [(i, at[(system, load)]) for i, load in enumerate(loads) if (system, load) in at]
        xs = [i + index * width for i, _ in present]
        bars = left.bar(xs, [m.per_second for _, m in present], width=width, label=system)
        if system != SEED:
            ratios = [_ratio(m, seed.get(loads[i])) for i, m in present]
            labels = ["" if r is None else f"{r:.2f}x" for r in ratios]
            left.bar_label(bars, labels=labels, fontsize=8)
        p99 = right.bar(xs, [m.accept_p99_ms for _, m in present], width=width, label=system)
        right.bar_label(p99, labels=[f"{m.accept_p99_ms:.0f}" for _, m in present], fontsize=7)
        e2e = latency.bar(xs, [m.e2e_p50_ms for _, m in present], width=width, label=system)
        latency.bar_label(e2e, labels=[f"{m.e2e_p50_ms:.0f}" for _, m in present], fontsize=7)
    ticks = [i + 0.4 - width / 2 for i in range(len(loads))]
    left.set(ylabel="reports/s (callback received); x = vs seed")
    right.set(yscale="log", ylabel="202 p99 (ms, log)")
    right.axhline(100, color="grey", linestyle="--", linewidth=1, label="202 p99 target")
    latency.set(yscale="log", ylabel="submit→callback p50 (ms, log)")
    for axis in (left, right, latency):
        axis.set_xticks(ticks, loads, fontsize=8)
        axis.grid(True, axis="y", alpha=0.3)
    handles, labels = right.get_legend_handles_labels()
    latency.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("control plane on a zero-cost engine (2 cores), one run side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _open_loop(
    system: str, url: str, procs: dict[str, list[psutil.Process]], args: argparse.Namespace
) -> list[Measurement]:
    """--batch 份尽快交一次，再按 --rates 的每个速率定速交一次。"""
    if not args.batch:
        return []
    rates = [float(r) for r in args.rates.split(",") if r]
    return [measure_batch(system, url, args.batch, procs, rate=rate) for rate in [0.0, *rates]]


def _lone(
    system: str, url: str, procs: dict[str, list[psutil.Process]], args: argparse.Namespace
) -> list[Measurement]:
    """孤立的请求：并发 1，每份交出之前空闲 --idle-gap-ms（0 = 不测）。

    这一档的 CPU ms/报告 连空闲时各进程自己的周期性工作一起算，比一个接一个时大。"""
    if not args.idle_gap_ms:
        return []
    count = _reports_at(1, args.reports)
    return [_measure(system, url, count, 1, procs, gap_ms=args.idle_gap_ms)]


def _reports_at(level: int, reports: int) -> int:
    """并发 1 时每份报告都是串行的：最多 200 份，免得这一档占掉大半时间。"""
    return reports if level > 1 else min(reports, 200)


def _postgres_pipeline(
    engine_url: str, engine_pid: int, ingress: int, levels: list[int], args: argparse.Namespace
) -> list[Measurement]:
    """Postgres 账本上的流水线（本机临时起一个 Postgres；入口固定 ingress 个副本）。"""
    from tests.support.postgres import PostgresServer  # 只在测 Postgres 账本时需要

    server = PostgresServer().start()
    measured: list[Measurement] = []
    try:
        with _pipeline(engine_url, server.create_database(), ingress) as replicas:
            replicas["engine"] = [psutil.Process(engine_pid)]
            postgres = psutil.Process(server.pid)
            for level in levels:
                # 服务器进程与它此刻的全部后端（连接池的连接在第一档之后就都在了）
                replicas["postgres"] = [postgres, *postgres.children()]
                count = _reports_at(level, args.reports)
                measured.append(_measure(f"pipeline-pg-{ingress}", APP_URL, count, level, replicas))
            measured += _lone(f"pipeline-pg-{ingress}", APP_URL, replicas, args)
    finally:
        server.cleanup()
    return measured


def main(argv: list[str] | None = None) -> int:
    """对照组与流水线并排测量，打印并保存结果。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=600)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument(
        "--systems",
        default="seed,pipeline",
        help="只测其中一部分：seed、pipeline（SQLite 账本）、pg（Postgres 账本，见 --pg-ingress）",
    )
    parser.add_argument("--pg-ingress", default="1,2", help="pg 这一组的入口副本数，逗号分隔")
    parser.add_argument(
        "--handle-transport",
        default="grpc",
        help="pipeline 这一组的句柄传输，逗号分隔（如 actor,grpc：同一次运行里并排，"
        "系统名为 pipeline-actor / pipeline-grpc）",
    )
    parser.add_argument(
        "--serve-mode",
        default="throughput",
        help=f"pipeline 这一组的 Serve 模式，逗号分隔（{'、'.join(SERVE_MODES)}；"
        "多于一种时系统名加上模式，如 pipeline-throughput）",
    )
    parser.add_argument(
        "--flame",
        type=int,
        default=0,
        help="在流水线的这一档并发下采样入口副本（--profiler），结果存在 --out-dir",
    )
    parser.add_argument(
        "--profiler",
        choices=PROFILERS,
        default="py-spy",
        help="py-spy：Python 的火焰图 ingress-flame.svg；perf：整个进程按 CPU 时钟采样，"
        "ingress-perf.data 与按库、按符号的汇总 ingress-perf.txt",
    )
    parser.add_argument(
        "--idle-gap-ms",
        type=float,
        default=20.0,
        help="闭环各档之后再测孤立的请求：并发 1，每份交出之前空闲这么多毫秒（0 = 不测）",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="各系统在闭环各档之后再测开环一批（这么多份以 64 个连接尽快交上，不等回调）",
    )
    parser.add_argument(
        "--rates",
        default="",
        help="开环定速（份/秒，逗号分隔）：每个速率交 --batch 份，不等答复（见 _batch）",
    )
    parser.add_argument(
        "--engine-latency-s",
        type=float,
        default=0.0,
        help="零成本引擎每个生成占用的秒数（像另一台机器上的 GPU 引擎：不花本机 CPU）",
    )
    parser.add_argument("--engine-slots", type=int, default=64, help="引擎同时生成的个数")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="结果写到这里")
    args = parser.parse_args(argv)
    if args.flame and args.profiler == "perf" and shutil.which("perf") is None:
        # 在起集群之前就说清楚，不在量到一半时才找不到命令
        parser.error("--profiler perf 需要 perf 命令（Debian 的 linux-perf 包）")
    exit_on_sigterm()
    systems = set(args.systems.split(","))
    levels = [int(c) for c in args.concurrency.split(",")]
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    os.nice(NICE)
    engine_port, seed_port = free_port(), free_port()
    engine_url = f"http://127.0.0.1:{engine_port}/v1"
    measurements: list[Measurement] = []
    engine_args = ("--latency-s", str(args.engine_latency_s), "--slots", str(args.engine_slots))
    with _companion("benchmarks.zero_engine", "--port", str(engine_port), *engine_args) as engine:
        wait_http_ok(f"{engine_url}/models", timeout_s=60)
        seed_args = ("--port", str(seed_port), "--engine-url", engine_url)
        if "seed" in systems:
            with _companion("benchmarks.seed_baseline", *seed_args) as seed:
                seed_url = f"http://127.0.0.1:{seed_port}"
                wait_http_ok(f"{seed_url}/docs", timeout_s=60)
                procs = {
                    "seed-app": [psutil.Process(seed.pid)],
                    "engine": [psutil.Process(engine.pid)],
                }
                for level in levels:
                    count = _reports_at(level, args.reports)
                    measurements.append(_measure(SEED, seed_url, count, level, procs))
                measurements += _lone(SEED, seed_url, procs, args)
                measurements += _open_loop(SEED, seed_url, procs, args)
        if "pipeline" in systems:
            transports = args.handle_transport.split(",")
            modes = args.serve_mode.split(",")
            for mode, transport in itertools.product(modes, transports):
                # 只测一种传输、一种模式时系统名仍是 pipeline（与以前的结果可比）
                name = "-".join(
                    ["pipeline"]
                    + ([transport] if len(transports) > 1 else [])
                    + ([mode] if len(modes) > 1 else [])
                )
                with _pipeline(engine_url, handle_transport=transport, serve_mode=mode) as replicas:
                    replicas["engine"] = [psutil.Process(engine.pid)]
                    for level in levels:
                        count = _reports_at(level, args.reports)
                        flame = level == args.flame
                        with sample_ingress(
                            replicas["ReportIngress"],
                            enabled=flame,
                            out_dir=args.out_dir,
                            tool=args.profiler,
                        ):
                            measurements.append(_measure(name, APP_URL, count, level, replicas))
                    measurements += _lone(name, APP_URL, replicas, args)
                    measurements += _open_loop(name, APP_URL, replicas, args)
        if "pg" in systems:
            for replicas_n in (int(n) for n in args.pg_ingress.split(",")):
                measurements += _postgres_pipeline(engine_url, engine.pid, replicas_n, levels, args)
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = _write_results(measurements, args.reports, options, args.out_dir)
    sys.stdout.write(f"结果：{path}（及同名 .md / .png，overhead-latest.*）\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
