"""GPU 路径的一键冒烟：在本机起 Ray head + LLM worker，用 serve_config.yaml（生产的 GPU 配置）部署，
模型换成现场生成的微型模型，交 N 份报告，等回调，打印 tokens/s；任何一份没有成功就以非零退出。

用法（有 NVIDIA GPU、已 `uv sync --extra gpu` 的机器）：`cluster/gpu_smoke.sh [--reports 16]`。
`--device cpu` 走同一条路径但用 serve_config.cpu.yaml 与 CPU 版 vLLM（测试用它证明脚本本身）。
标准输出只有最后一行 JSON 汇总；过程写到标准错误。启动的节点经自己的 PID 关闭。
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from fastapi import FastAPI, Request

from cluster.build_tiny_model import build_tiny_model, stdout_to_stderr
from cluster.ports import free_port, free_port_block

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "cluster"
LLM_DEPLOYMENT = "LLMServer:report-llm"
# 微型模型的上下文长度（build_tiny_model 的 max_position_embeddings）
TINY_MODEL_LEN = 4096
CONFIG_BY_DEVICE = {"gpu": "serve_config.yaml", "cpu": "serve_config.cpu.yaml"}


def _log(message: str) -> None:
    sys.stderr.write(f"[gpu_smoke] {message}\n")
    sys.stderr.flush()


def _require_gpu() -> None:
    """没有 NVIDIA GPU 时直接说清楚（不去部署一个注定起不来的 LLM 副本）。"""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise SystemExit("找不到 nvidia-smi：没有 NVIDIA 驱动（CPU 上试脚本用 --device cpu）")
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    if listed.returncode != 0 or not gpus:
        raise SystemExit(f"nvidia-smi 没有列出 GPU：{listed.stdout}{listed.stderr}".strip())
    _log("GPU：" + "；".join(gpus))


def smoke_config(device: str, http_port: int) -> dict[str, Any]:
    """由生产配置派生：只改端口、上下文长度（微型模型）、副本数（各 1）与回调地址（本机接收方）。"""
    config: dict[str, Any] = yaml.safe_load(
        (ROOT / CONFIG_BY_DEVICE[device]).read_text(encoding="utf-8")
    )
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    [app] = config["applications"]
    app["args"]["callback_allow_loopback"] = True
    app["args"]["engine"]["engine_kwargs"]["max_model_len"] = TINY_MODEL_LEN
    for deployment in app["deployments"]:
        if deployment["name"] == LLM_DEPLOYMENT:
            deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
        elif "num_replicas" in deployment:
            deployment["num_replicas"] = 1
    return config


class _Receiver:
    """backend B 的替身：在 127.0.0.1 上收回调，按 trace_id 记下载荷。"""

    def __init__(self) -> None:
        self.received: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        app = FastAPI()

        @app.post("/hooks/reports")
        async def receive(request: Request) -> dict[str, bool]:
            payload: dict[str, Any] = await request.json()
            with self._lock:
                self.received.setdefault(payload["trace_id"], payload)
            return {"ok": True}

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hooks/reports"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])), daemon=True
        )

    @contextmanager
    def running(self) -> Iterator[_Receiver]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._sock.close()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self.received)


@contextmanager
def _ray_node(
    script: str, env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """用 cluster/ 的脚本前台起一个节点（独立会话）；退出时 SIGTERM 它，超时再杀它的进程组。"""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(SCRIPTS / script), *(["--block"] if script == "start_head.sh" else [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        # ray start 退出后它的进程组里若还有残留（raylet、gcs 等），一并结束
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _deploy(env: dict[str, str], nodes: dict[str, subprocess.Popen[bytes]], workdir: Path) -> None:
    """运行 deploy.sh；期间哪个节点进程退出了就立即失败（不空等到部署超时）。"""
    deploy = subprocess.Popen([str(SCRIPTS / "deploy.sh")], env=env, stdout=sys.stderr)
    try:
        while deploy.poll() is None:
            for name, node in nodes.items():
                if node.poll() is not None:
                    raise RuntimeError(
                        f"{name} 节点退出了（退出码 {node.returncode}），见 {workdir / name}.log"
                    )
            time.sleep(1)
    finally:
        if deploy.poll() is None:
            deploy.terminate()
            deploy.wait(timeout=30)
    if deploy.returncode != 0:
        raise RuntimeError(f"deploy.sh 失败（退出码 {deploy.returncode}），原因见上面的输出")


def _report_request(callback_url: str, index: int) -> dict[str, Any]:
    return {
        "report_type": "sales_weekly",
        "inputs": {
            "period": "2026-11-16 至 2026-11-22",
            "region": f"华东区 {index}",
            "sales_data": "销售额 320 万元，环比 +8%。",
        },
        "length": "short",
        "callback_url": callback_url,
    }


async def _send_reports(base_url: str, api_key: str, callback_url: str, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/reports", json=_report_request(callback_url, i))
                for i in range(count)
            )
        )
    bad = [f"{r.status_code} {r.text}" for r in responses if r.status_code != 202]
    if bad:
        raise RuntimeError(f"{len(bad)} 份报告没有被受理：{bad[:3]}")
    return [r.json()["trace_id"] for r in responses]


def run(device: str, reports: int, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """起集群、部署、交报告、收回调；返回汇总（ok 为真表示每一份都成功回调）。"""
    if device == "gpu":
        _require_gpu()
    model_dir = build_tiny_model(workdir / "tiny-model")
    gcs_port, dashboard_port, http_port = free_port(), free_port(), free_port()
    config_path = workdir / "serve_config.smoke.yaml"
    config_path.write_text(yaml.safe_dump(smoke_config(device, http_port), allow_unicode=True))
    api_key = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_NODE_IP": "127.0.0.1",
        "RAY_GCS_PORT": str(gcs_port),
        "RAY_DASHBOARD_PORT": str(dashboard_port),
        "RAY_HEAD_ADDRESS": f"127.0.0.1:{gcs_port}",
        "REPORTS_ENGINE__MODEL_SOURCE": str(model_dir),
        "REPORTS_JOBS__LEDGER_PATH": str(workdir / "ledger.sqlite3"),
        "REPORTS_API_KEYS": api_key,
        # 冒烟结束时整个集群一起关：节点收到 SIGTERM 不必排空（无处可迁），每个节点省约 30 秒
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    base_url = f"http://127.0.0.1:{http_port}"
    receiver = _Receiver()
    with ExitStack() as stack:
        stack.enter_context(receiver.running())
        # 两个节点在同一台机器上：各用一段固定端口（与跨主机部署同一条路径）
        head_env = env | {"RAY_PORT_BASE": str(free_port_block())}
        nodes = {
            "head": stack.enter_context(_ray_node("start_head.sh", head_env, workdir / "head.log"))
        }
        worker_env = env | {"RAY_PORT_BASE": str(free_port_block())}
        nodes["worker"] = stack.enter_context(
            _ray_node("start_worker.sh", worker_env, workdir / "worker.log")
        )
        _log(f"部署 {CONFIG_BY_DEVICE[device]}（微型模型 {model_dir}）……")
        deploy_env = env | {
            "SERVE_CONFIG": str(config_path),
            "RAY_DASHBOARD_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
            "READY_URL": f"{base_url}/readyz",
            "DEPLOY_TIMEOUT_S": str(int(timeout_s)),
        }
        _deploy(deploy_env, nodes, workdir)
        _log(f"交 {reports} 份报告……")
        started = time.monotonic()
        trace_ids = asyncio.run(_send_reports(base_url, api_key, receiver.url, reports))
        deadline = started + timeout_s
        while len(receiver.snapshot().keys() & set(trace_ids)) < len(trace_ids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
    return _summary(device, trace_ids, receiver.snapshot(), elapsed)


def _summary(
    device: str, trace_ids: list[str], received: dict[str, dict[str, Any]], elapsed: float
) -> dict[str, Any]:
    outcomes = [received.get(t) for t in trace_ids]
    succeeded = [p for p in outcomes if p is not None and p["status"] == "succeeded"]
    tokens = sum(p["report"]["usage"]["completion_tokens"] for p in succeeded)
    problems = {
        t: ("没有回调" if p is None else f"{p['status']}: {p.get('error')}")
        for t, p in zip(trace_ids, outcomes, strict=True)
        if p is None or p["status"] != "succeeded"
    }
    return {
        "device": device,
        "reports": len(trace_ids),
        "succeeded": len(succeeded),
        "completion_tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else 0.0,
        "ok": not problems and tokens > 0,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    """命令行入口：打印一行 JSON 汇总；每份报告都成功回调时退出码 0。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=sorted(CONFIG_BY_DEVICE), default="gpu")
    parser.add_argument("--reports", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1200, help="部署与等回调各自的上限（秒）")
    parser.add_argument("--workdir", type=Path, help="模型、账本与节点日志放这里（默认临时目录）")
    args = parser.parse_args(argv)
    # 被 SIGTERM 停下时也经 ExitStack 关掉自己起的节点与接收方
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            # 标准输出只留最后那一行 JSON：tokenizers 等在文件描述符层面写 fd 1 的输出都改到标准错误
            with stdout_to_stderr():
                summary = run(args.device, args.reports, workdir, args.timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, RuntimeError) as exc:
            _log(f"失败：{exc}（节点日志在 {workdir}，--workdir 可保留）")
            return 1
        _log(f"节点日志在 {workdir}" if args.workdir else "（--workdir 可保留节点日志）")
    sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
    if not summary["ok"]:
        _log(f"失败：{summary['problems'] or '没有生成 token'}")
        return 1
    _log(f"通过：{summary['succeeded']} 份报告，{summary['tokens_per_s']} tokens/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
