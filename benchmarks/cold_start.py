"""缩到零的代价：LLM 在零个副本时交一份报告，到拿到它要多久；与热的时候比。

    python -m benchmarks.cold_start [--rounds 3] [--idle-delay 10]

照运维的做法：`cluster/local_run.sh start`（即 make run）部署一份 serve_config.cpu.yaml 的副本，只把
LLMServer 改成 `min_replicas: 0`、`downscale_delay_s: --idle-delay`。报告类型是 sales_weekly，但
max_tokens 为 1：受理 → 回调的时间就是“提交 → 第一个 token”加上控制面的一圈。每一轮：
  cold：等 LLM 缩到 0 个副本，交一份，记下 LLM 副本 RUNNING 的时刻（冷启动）与回调到达的时刻；
  warm：紧接着再交一份（副本还在），记回调到达的时刻。
结果写到 benchmarks/results/cold-start-<时间>.json / .md / .png，并更新 cold-start-latest.*。
端口与 make run 相同（8000 等）：make run 在跑时拒绝开始。只访问 127.0.0.1。
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from loguru import logger

from benchmarks.common import RESULTS, RUN_DIR, ResultFiles, exit_on_sigterm, fresh_ledger
from serve_app.core.settings import PROJECT_ROOT
from tests.support.ray_nodes import ClusterApi
from tests.support.receiver import CallbackReceiver
from tests.support.waiting import wait_until

BASE_URL = "http://127.0.0.1:8000"
DASHBOARD = "http://127.0.0.1:8265"
APP = "reports"
LLM_DEPLOYMENT = "LLMServer:report-llm"
LOCAL_RUN = PROJECT_ROOT / "cluster" / "local_run.sh"
HEAD_PID = PROJECT_ROOT / ".run" / "head.pid"
TOKEN_FILE = PROJECT_ROOT / ".run" / "ray_auth_token"


def _templates(workdir: Path) -> Path:
    """内置模板的副本：sales_weekly 的 short 只生成 1 个 token。"""
    data: dict[str, Any] = yaml.safe_load(
        (PROJECT_ROOT / "prompts" / "templates.yaml").read_text(encoding="utf-8")
    )
    for template in data["templates"]:
        if template["name"] == "sales_weekly":
            template["lengths"]["short"] = {"max_tokens": 1}
    path = workdir / "templates.first-token.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _config(workdir: Path, idle_delay_s: int) -> Path:
    """serve_config.cpu.yaml 的副本：LLMServer 可以缩到零。"""
    config: dict[str, Any] = yaml.safe_load(
        (PROJECT_ROOT / "serve_config.cpu.yaml").read_text(encoding="utf-8")
    )
    [app] = config["applications"]
    app["args"]["templates_path"] = str(_templates(workdir))
    for deployment in app["deployments"]:
        if deployment["name"] == LLM_DEPLOYMENT:
            deployment["autoscaling_config"] |= {
                "min_replicas": 0,
                "downscale_delay_s": idle_delay_s,
            }
    path = workdir / "serve_config.scale-to-zero.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def _head_alive() -> bool:
    if not HEAD_PID.exists():
        return False
    try:
        pid = int(HEAD_PID.read_text().strip())
    except ValueError:
        return False
    return Path(f"/proc/{pid}").exists()


class _Run:
    """一次测量：本轮的接收方、dashboard 客户端与 HTTP 客户端。"""

    def __init__(self, receiver: CallbackReceiver, api: ClusterApi, client: httpx.Client) -> None:
        self.receiver = receiver
        self.api = api
        self.client = client

    def llm(self) -> tuple[int, int]:
        """(目标副本数, RUNNING 的副本数)。"""
        details = self.api.deployment(APP, LLM_DEPLOYMENT)
        running = sum(1 for r in details["replicas"] if r["state"] == "RUNNING")
        return int(details["target_num_replicas"]), running

    def at_zero(self) -> bool:
        return self.llm() == (0, 0) and not self.api.deployment(APP, LLM_DEPLOYMENT)["replicas"]

    def submit(self) -> tuple[str, float]:
        response = self.client.post(
            "/v1/reports",
            json={
                "report_type": "sales_weekly",
                "length": "short",
                "inputs": {"period": "本周", "region": "华东区", "sales_data": "销售额 320 万元。"},
                "callback_url": self.receiver.url,
            },
        )
        response.raise_for_status()
        return str(response.json()["trace_id"]), time.monotonic()

    def callback_at(self, trace_id: str, timeout_s: float) -> tuple[float, str]:
        def arrived() -> str | None:
            for record in self.receiver.received:
                if record.body.get("trace_id") == trace_id:
                    return str(record.body["status"])
            return None

        status = wait_until(
            arrived, what=f"{trace_id} 的回调", timeout_s=timeout_s, interval_s=0.05
        )
        return time.monotonic(), status


def _round(run: _Run, number: int) -> dict[str, Any]:
    run.api.wait_for(run.at_zero, 600, "LLM 缩到 0 个副本")
    readyz = run.client.get("/readyz").json()
    trace_id, submitted = run.submit()
    running_at = None
    while running_at is None:
        if run.llm()[1] >= 1:
            running_at = time.monotonic()
        else:
            time.sleep(0.25)
    done_at, cold_status = run.callback_at(trace_id, 600)
    warm_id, warm_submitted = run.submit()
    warm_done, warm_status = run.callback_at(warm_id, 120)
    row = {
        "round": number,
        "readyz_at_zero": readyz,
        "cold_start_s": round(running_at - submitted, 2),
        "cold_first_token_s": round(done_at - submitted, 2),
        "warm_first_token_s": round(warm_done - warm_submitted, 3),
        "statuses": [cold_status, warm_status],
    }
    logger.info("第 {} 轮：{}", number, row)
    return row


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    def median(key: str) -> float:
        return round(float(statistics.median(float(r[key]) for r in rows)), 3)

    return {
        "cold_start_s": median("cold_start_s"),
        "cold_first_token_s": median("cold_first_token_s"),
        "warm_first_token_s": median("warm_first_token_s"),
    }


def _write(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    files = ResultFiles("cold-start")
    stamp = files.stamp
    summary = _summary(rows)
    lines = [
        f"# 缩到零的代价（{stamp}，{meta['rounds']} 轮，中位数）",
        "",
        f"命令：`{meta['command']}`",
        "",
        "| 轮 | 冷启动（提交 → LLM 副本 RUNNING） | 冷：提交 → 回调（1 个 token） "
        "| 热：提交 → 回调（1 个 token） |",
        "| --- | --- | --- | --- |",
        *(
            f"| {r['round']} | {r['cold_start_s']:.1f} s | {r['cold_first_token_s']:.1f} s "
            f"| {r['warm_first_token_s'] * 1000:.0f} ms |"
            for r in rows
        ),
        f"| 中位数 | {summary['cold_start_s']:.1f} s | {summary['cold_first_token_s']:.1f} s "
        f"| {summary['warm_first_token_s'] * 1000:.0f} ms |",
    ]
    data = {"meta": meta, "rounds": rows, "median": summary}
    files.save(data, lines, lambda png: _plot(rows, summary, png), echo=True)
    return stamp


def _plot(rows: list[dict[str, Any]], summary: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cold = [r["cold_first_token_s"] for r in rows]
    warm = [r["warm_first_token_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], cold, width=0.4, label="cold: 0 replicas")
    ax.bar([i + 0.2 for i in x], warm, width=0.4, label="warm: 1 replica")
    for i, (c, w) in enumerate(zip(cold, warm, strict=True)):
        ax.text(i - 0.2, c, f"{c:.0f} s", ha="center", va="bottom")
        ax.text(i + 0.2, w, f"{w * 1000:.0f} ms", ha="center", va="bottom")
    ax.set_xticks(list(x), [f"round {r['round']}" for r in rows])
    ax.set_ylabel("submit -> first-token report (s)")
    ax.set_title(
        f"scale to zero: cold {summary['cold_first_token_s']:.0f} s "
        f"vs warm {summary['warm_first_token_s'] * 1000:.0f} ms (median)"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-delay", type=int, default=10, help="LLMServer 的 downscale_delay_s")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    if _head_alive():
        sys.stderr.write("make run 的集群在运行（端口相同）：先 make stop\n")
        return 2
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    config = _config(RUN_DIR, args.idle_delay)
    env = {
        **os.environ,
        "SERVE_CONFIG": str(config),
        "REPORTS_JOBS__LEDGER_PATH": str(fresh_ledger("ledger-cold-start.sqlite3")),
    }
    subprocess.run(["bash", str(LOCAL_RUN), "start"], env=env, check=True)
    rows: list[dict[str, Any]] = []
    try:
        api = ClusterApi(DASHBOARD, TOKEN_FILE.read_text().strip())
        with (
            CallbackReceiver() as receiver,
            httpx.Client(base_url=BASE_URL, timeout=30) as client,
        ):
            run = _Run(receiver, api, client)
            for number in range(1, args.rounds + 1):
                rows.append(_round(run, number))
        api.close()
    finally:
        subprocess.run(["bash", str(LOCAL_RUN), "stop"], check=False)
    meta = {
        "rounds": args.rounds,
        "idle_delay_s": args.idle_delay,
        "command": "make bench-cold-start"
        + (f' ARGS="{" ".join(argv or sys.argv[1:])}"' if (argv or sys.argv[1:]) else ""),
        "machine": f"{os.cpu_count()} 核",
    }
    _write(rows, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
