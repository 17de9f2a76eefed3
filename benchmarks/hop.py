"""基准：一跳（部署之间的一次跨进程往返）本身要多少时间与 CPU——流水线在并发 1 时的下限。

    python -m benchmarks.hop [--calls 2000] [--concurrency 1,16] [--rounds 3] [--hops ...]
                             [--idle-gap-ms 20] [--idle-calls 300]

本机起一个 Ray 集群（与 make run 一样开 Serve 的吞吐模式），两个部署：Caller 在自己的副本里
（像入口副本那样）对 Echo 连续调用，每次带约 2 KB 的参数（与一个作业相当），Echo 原样返回。
只换一跳的方式：
  serve-grpc：部署句柄经副本的内部 gRPC、路由器在本副本的事件循环里（入口 → 渲染 / 账本 / 回调）；
  serve-actor：部署句柄经 Ray actor 调用（入口 → 集群内的 LLMServer）；
  ray-actor：不经 Serve、直接调一个普通 Ray actor（自己一个进程；Serve 句柄之下的那一层）；
  http：aiohttp 对 Echo 进程里的 HTTP 服务（127.0.0.1；对照组对引擎与 backend B 就是这样一跳）；
  ledger-write：同样的 gRPC 句柄调真的 Ledger 部署（SQLite 账本，临时目录），每次推进同一个作业一次
  （读一行、判定、写租约，组提交与 fsync；行数不增长）——与 serve-grpc 并排，差值就是我们自己在一次
  账本写里花的；
  callback-send：同样的句柄调真的 CallbackSender 部署 send_many，一批一个成功回调（约 2 KB 的
  报告），它签名、过 SSRF 检查、经 httpx 投给 Echo 副本里的 HTTP 服务——与 serve-grpc + http 并排，
  差值就是我们自己在一次投递里花的（被调方 CPU 量的是 CallbackSender 的进程）。
并发 1 时 1000 / 每秒调用数 就是一跳的往返毫秒；CPU 分调用方（Caller 副本）与被调方（Echo 副本、
actor 或 Ledger 副本的进程）。
每档并发、每种方式交替跑 --rounds 轮取中位数。结果写到 benchmarks/results/hop-<时间>.json / .md /
.png（--out-dir 改位置）并更新 hop-latest.*。
再量孤立的一次：一次一个地调用，每次之前空闲 --idle-gap-ms 毫秒，与一个接一个交替，记往返的
p50 / p90（hop-idle-<时间>.*、hop-idle-latest.*）——两边的线程睡下之后被唤醒要多久，backend B
偶尔交一份报告时每一跳等的就是这个。只访问 127.0.0.1。
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import ray
from aiohttp import ClientSession, TCPConnector, web
from ray import serve
from ray.serve.handle import DeploymentHandle

from benchmarks.common import (
    WARMUP,
    ClientReport,
    Close,
    ResultFiles,
    Send,
    alternate,
    client_cpu,
    client_meta,
    client_parser,
    percentile,
    prepare_client_run,
    write_client_results,
)
from deployments.callback import callback_sender_deployment
from deployments.ledger import ledger_deployment
from deployments.ray_private import by_reference, route_in_this_loop
from serve_app.core.settings import PROJECT_ROOT, Settings
from serve_app.ledger.records import JobState
from serve_app.models.reports import CallbackPayload, Completion, ReportJob, Usage
from tests.support.local_http import free_port
from tests.support.sample import load_catalog

HOPS = ("serve-grpc", "serve-actor", "ray-actor", "http", "ledger-write", "callback-send")
PAYLOAD = "作" * 680  # 约 2 KB（UTF-8）
# ledger-write 反复推进的那个作业与它的持有者
LEDGER_JOB = "hop-ledger-write"
LEDGER_OWNER = "bench-hop"
# 量空闲之后的往返前，先连续调用几次（建连接、各自的第一次调用）
IDLE_WARMUP = 20


@ray.remote(num_cpus=0)
class _EchoActor:
    """普通的 Ray actor（不经 Serve，自己一个进程）。"""

    async def echo(self, payload: str) -> str:
        return payload

    def pid(self) -> int:
        return os.getpid()


class Echo:
    """被调的一方：Serve 方法与本副本里的一个 HTTP 服务，都原样返回参数；另带一个普通 Ray actor。"""

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self.actor = _EchoActor.remote()  # type: ignore[attr-defined]

    async def echo(self, payload: str) -> str:
        return payload

    async def _http_echo(self, request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def endpoints(self) -> dict[str, Any]:
        """HTTP 服务（第一次调用时在本副本的事件循环里起）、actor、本进程与 actor 进程的 PID。"""
        if self._runner is None:
            app = web.Application()
            app.router.add_post("/echo", self._http_echo)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        actor_pid = await self.actor.pid.remote()
        return {"port": self.port, "actor": self.actor, "pid": os.getpid(), "actor_pid": actor_pid}


class Caller:
    """调用的一方：在本副本里按某种方式连续调用 Echo，量本进程与 Echo 进程的 CPU。"""

    def __init__(
        self,
        echo: DeploymentHandle[Any],
        ledger: DeploymentHandle[Any],
        callback: DeploymentHandle[Any],
    ) -> None:
        # 与入口副本相同的两种句柄（deployments/ingress.py 的 light_handles 与 llm_handle）
        self._grpc = by_reference(route_in_this_loop(echo), False)
        self._actor_handle = by_reference(echo, True)
        self._ledger = by_reference(route_in_this_loop(ledger), False)
        self._callback = by_reference(route_in_this_loop(callback), False)
        self._admitted = False

    async def run(self, hop: str, calls: int, concurrency: int) -> dict[str, float]:
        """量一轮：调用方 CPU ms/次、次/秒、被调方 CPU ms/次。"""
        callee, send, close = await self._prepare(hop)
        before = sum(callee.cpu_times()[:2])
        result = await client_cpu(send, close, calls, concurrency)
        # 被调方的 CPU 连预热的那些调用一起量，按总次数平均（每次的代价相同）
        callee_s = sum(callee.cpu_times()[:2]) - before
        result["callee_cpu_ms"] = callee_s / (calls + WARMUP) * 1000
        return result

    async def round_trips(self, hop: str, calls: int, gap_s: float) -> list[float]:
        """一次一个地调用，每次之前空闲 gap_s 秒（0 = 一个接一个），返回各次往返的毫秒。

        空闲之后的一次才是一个孤立请求（backend B 偶尔交一份报告）在每一跳上等的：两边的线程已睡下，
        要被唤醒。"""
        _, send, close = await self._prepare(hop)
        try:
            for _ in range(IDLE_WARMUP):
                await send()
            times: list[float] = []
            for _ in range(calls):
                if gap_s:
                    await asyncio.sleep(gap_s)
                began = time.perf_counter()
                await send()
                times.append((time.perf_counter() - began) * 1000)
        finally:
            await close()
        return times

    async def _prepare(self, hop: str) -> tuple[psutil.Process, Send, Close]:
        """这一跳的一次调用与关闭，以及被调方的进程（量它的 CPU）。"""
        if hop == "ledger-write":
            send, close = await self._ledger_sender()
            return psutil.Process(_replica_pid("Ledger")), send, close
        endpoints = await self._grpc.endpoints.remote()
        if hop == "callback-send":
            send, close = self._callback_sender(endpoints)
            return psutil.Process(_replica_pid("CallbackSender")), send, close
        callee = psutil.Process(endpoints["actor_pid" if hop == "ray-actor" else "pid"])
        send, close = await self._sender(hop, endpoints)
        return callee, send, close

    async def _ledger_sender(self) -> tuple[Send, Close]:
        """对 Ledger 部署推进同一个作业（第一次先受理它）：每次一个真的单行写，账本不变大。"""
        if not self._admitted:
            [(ok, admission)] = await self._ledger.apply.remote(
                [("admit", (_job(LEDGER_JOB), LEDGER_OWNER, None))]
            )
            if not ok or admission.record is None:
                raise RuntimeError(f"受理没有写进账本：{admission!r}")
            self._admitted = True
        call = ("advance", (LEDGER_JOB, LEDGER_OWNER, JobState.GENERATING, ()))

        async def advance() -> None:
            [(ok, verdict)] = await self._ledger.apply.remote([call])
            if not ok or verdict != "ok":
                raise RuntimeError(f"推进没有写进账本：{verdict!r}")

        return advance, _nothing

    def _callback_sender(self, endpoints: dict[str, Any]) -> tuple[Send, Close]:
        """对 CallbackSender 部署投一批一个成功回调，收方是 Echo 副本里的 HTTP 服务（答 200）。"""
        url = f"http://127.0.0.1:{endpoints['port']}/echo"
        job = _job("hop-callback-send")
        usage = Usage(prompt_tokens=64, completion_tokens=256)
        report = Completion(content=PAYLOAD, model="hop", finish_reason="stop", usage=usage)
        batch = [(url, CallbackPayload.succeeded(job, report))]

        async def deliver() -> None:
            [(ok, outcome)] = await self._callback.send_many.remote(batch)
            if not ok or not outcome.delivered:
                raise RuntimeError(f"回调没有送达：{outcome!r}")

        return deliver, _nothing

    async def _sender(self, hop: str, endpoints: dict[str, Any]) -> tuple[Send, Close]:
        if hop == "serve-grpc":

            async def grpc() -> None:
                await self._grpc.echo.remote(PAYLOAD)

            return grpc, _nothing
        if hop == "serve-actor":

            async def actor_handle() -> None:
                await self._actor_handle.echo.remote(PAYLOAD)

            return actor_handle, _nothing
        if hop == "ray-actor":
            actor = endpoints["actor"]

            async def raw() -> None:
                await actor.echo.remote(PAYLOAD)

            return raw, _nothing
        session = ClientSession(connector=TCPConnector(limit=0))
        url = f"http://127.0.0.1:{endpoints['port']}/echo"
        body = PAYLOAD.encode()

        async def http() -> None:
            async with session.post(url, data=body) as response:
                await response.read()

        return http, session.close


async def _nothing() -> None:
    return None


def _replica_pid(deployment: str) -> int:
    """本机某个部署的副本进程（Ray 给副本进程起的名字里带部署名）。"""
    for process in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:hop:{deployment}" in " ".join(process.info["cmdline"] or []):
            return int(process.pid)
    raise RuntimeError(f"找不到 {deployment} 副本的进程")


def _job(trace_id: str) -> ReportJob:
    """一个示例作业（内置报告类型 sales_weekly 的示例输入）。"""
    spec = load_catalog().get("sales_weekly")
    return ReportJob(
        trace_id=trace_id,
        report_type="sales_weekly",
        inputs=dict(spec.sample_inputs),
        length="short",
        callback_url="http://127.0.0.1:9/hooks/reports",
        created_at=datetime.now(UTC),
    )


REPORT = ClientReport(
    prefix="hop",
    title="一跳的代价（部署之间的一次往返）",
    call="调用",
    key="hop",
    key_title="一跳的方式",
    plot_call="round trip",
    panels=(
        ("One hop between two processes (Serve throughput mode, ~2 KB payload)", lambda _: True),
    ),
    extra=(("callee_cpu_ms", "被调方 CPU ms/调用"),),
)


def main(argv: list[str] | None = None) -> int:
    """各种一跳交替测，打印并保存结果。"""
    parser = client_parser(__doc__, "calls", "hops", HOPS)
    parser.set_defaults(concurrency="1,16")
    parser.add_argument(
        "--idle-gap-ms",
        type=float,
        default=20.0,
        help="再量一次一个的往返：每次之前空闲这么多毫秒，与一个接一个并排（0 = 不量）",
    )
    parser.add_argument("--idle-calls", type=int, default=300, help="每种一跳、每轮量几次往返")
    args = parser.parse_args(argv)
    prepare_client_run(args.out_dir)
    # 与 make run 相同的 Serve 模式；Ray 的 worker 从这个环境起，找得到本仓库的模块
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p
    )
    # Ledger 与 CallbackSender 部署读 Settings：账本放临时目录；本基准不经 HTTP、不调引擎，鉴权与
    # 模型来源只为过校验
    ledger_dir = tempfile.mkdtemp(prefix="bench-hop-")
    os.environ.update(
        {
            "REPORTS_JOBS__LEDGER_PATH": os.path.join(ledger_dir, "ledger.sqlite3"),
            "REPORTS_AUTH_DISABLED": "true",
            "REPORTS_ENGINE__MODEL_SOURCE": "unused-by-bench-hop",
            # CallbackSender 投给本机的 Echo：放行回环地址，签名用一把一次性的密钥
            "REPORTS_CALLBACK_ALLOW_LOOPBACK": "true",
            "CALLBACK_SIGNING_SECRET": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
            "REPORTS_LOG_LEVEL": "WARNING",
        }
    )
    meta = client_meta(args.calls, args.rounds, "bench-hop", argv, ray=ray.__version__)
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    try:
        # 在途上限与应用里的轻量部署同一量级（serve_config.yaml：512–2000）：量的是一跳本身，
        # 不是 Serve 默认的 5 个在途上限下路由器的排队与退避
        echo = serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)(
            Echo
        )
        caller = serve.deployment(ray_actor_options={"num_cpus": 0.1})(Caller)
        ledger = ledger_deployment.options(ray_actor_options={"num_cpus": 0.1})
        callback = callback_sender_deployment.options(ray_actor_options={"num_cpus": 0.1})
        settings = Settings()
        handle = serve.run(
            caller.bind(echo.bind(), ledger.bind(settings), callback.bind(settings)),
            name="hop",
            route_prefix=None,
        )

        def measure(hop: str, level: int) -> dict[str, float]:
            result: dict[str, float] = handle.run.remote(hop, args.calls, level).result()
            return result

        rows = alternate(
            args.hops.split(","),
            [int(c) for c in args.concurrency.split(",")],
            args.rounds,
            measure,
            key=REPORT.key,
        )
        idle = (
            _idle_round_trips(
                handle, args.hops.split(","), args.idle_calls, args.idle_gap_ms, args.rounds
            )
            if args.idle_gap_ms > 0
            else []
        )
    finally:
        # 集群是本进程起的：ray.shutdown 连同 Serve 的控制器与副本一起停掉（serve.shutdown 在这里
        # 要等满 30 秒的超时）
        ray.shutdown()
        shutil.rmtree(ledger_dir, ignore_errors=True)
    write_client_results(REPORT, rows, meta, args.out_dir)
    if idle:
        _write_idle(idle, meta | {"idle_calls": args.idle_calls}, args.idle_gap_ms, args.out_dir)
    return 0


def _idle_round_trips(
    handle: DeploymentHandle[Any], hops: list[str], calls: int, gap_ms: float, rounds: int
) -> list[dict[str, Any]]:
    """每种一跳：一个接一个与每次前空闲 gap_ms 交替量 rounds 轮，合起来取往返的 p50 / p90。"""
    samples: dict[tuple[str, float], list[float]] = {}
    for round_ in range(rounds):
        for hop in hops:
            for gap in (0.0, gap_ms):
                times: list[float] = handle.round_trips.remote(hop, calls, gap / 1000).result()
                samples.setdefault((hop, gap), []).extend(times)
                sys.stdout.write(
                    f"空闲 {gap:>4g} ms 第 {round_ + 1} 轮 {hop:<14} "
                    f"往返 p50 {statistics.median(times):.2f} ms\n"
                )
    return [
        {
            "hop": hop,
            "gap_ms": gap,
            "calls": len(times),
            "p50_ms": round(percentile(times, 0.5), 3),
            "p90_ms": round(percentile(times, 0.9), 3),
        }
        for (hop, gap), times in samples.items()
    ]


def _write_idle(
    rows: list[dict[str, Any]], meta: dict[str, Any], gap_ms: float, out_dir: Path
) -> None:
    """空闲之后的往返另存为 hop-idle-<时间>.json / .md / .png，更新 hop-idle-latest.*，并打印表。"""
    files = ResultFiles("hop-idle", out_dir)
    stamp = files.stamp
    by = {(r["hop"], r["gap_ms"]): r for r in rows}
    hops = list(dict.fromkeys(r["hop"] for r in rows))
    lines = [
        f"# 空闲之后的一跳（{stamp}，每种一跳每轮 {meta['idle_calls']} 次 × {meta['rounds']} 轮）",
        "",
        f"命令：`{meta['command']}`",
        "",
        "| 一跳的方式 | 一个接一个：往返 p50 / p90 ms "
        f"| 每次前空闲 {gap_ms:g} ms：往返 p50 / p90 ms | 倍数（p50） |",
        "| --- | ---: | ---: | ---: |",
    ]
    for hop in hops:
        busy, idle = by[(hop, 0.0)], by[(hop, gap_ms)]
        lines.append(
            f"| {hop} | {busy['p50_ms']:.2f} / {busy['p90_ms']:.2f} | "
            f"{idle['p50_ms']:.2f} / {idle['p90_ms']:.2f} | {idle['p50_ms'] / busy['p50_ms']:.1f} |"
        )
    data = {"meta": meta, "rows": rows}
    files.save(data, lines, lambda png: _plot_idle(by, hops, gap_ms, png), echo=True)


def _plot_idle(
    by: dict[tuple[str, float], dict[str, Any]], hops: list[str], gap_ms: float, path: Path
) -> None:
    """每种一跳两根柱：一个接一个 / 空闲之后的往返 p50，柱上写 p50 与 p90。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.38
    for i, (gap, label) in enumerate(
        ((0.0, "back to back"), (gap_ms, f"after {gap_ms:g} ms idle"))
    ):
        xs = [j + (i - 0.5) * width for j in range(len(hops))]
        heights = [by[(hop, gap)]["p50_ms"] for hop in hops]
        ax.bar(xs, heights, width=width, label=label)
        for x, hop, h in zip(xs, hops, heights, strict=True):
            ax.text(
                x,
                h,
                f"{h:.2f}\np90 {by[(hop, gap)]['p90_ms']:.2f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(range(len(hops)), hops)
    ax.set_ylabel("round trip p50, ms (lower is better)")
    ax.set_ylim(0, max(r["p90_ms"] for r in by.values()) * 1.3)
    ax.set_title("One hop, one call at a time: back to back vs after the machine idles")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
