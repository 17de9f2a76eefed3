"""README 的快速开始与“接入 backend B”，在新克隆上照原样执行。

新克隆在临时目录里：没有 .cache、.run、.venv（依赖从零装，uv 的下载缓存可以复用）。
按 README 的顺序跑 `make run`、`make demo`、`make stop`，中间执行“接入 backend B”一节的全部代码块
与 docs/operations.md“指标与告警”的 `make metrics`；
断言：就绪时间不超过 README 写的分钟数（用时存 .run/quickstart-timing.json）、演示收到验过签的回调、
`make stop` 后 make run 启动的进程（按记下的 PID）一个不剩。
测试按定义顺序依赖前一步。
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from serve_app.core.settings import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
# 新手照着敲的命令不只在 README 里：运维指南的代码块也照原样执行
OPERATIONS = (PROJECT_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
API = (PROJECT_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
PORT = 8000
METRICS_PORT = 9090
# 从外层 make / 开发者环境里继承会改变行为的变量：新用户没有它们
_INHERITED = (
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "CALLBACK_SIGNING_SECRET",
)


def _section(heading: str, text: str = README) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _bash_blocks(heading: str, text: str = README) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", _section(heading, text), flags=re.DOTALL)


def quickstart_commands() -> list[str]:
    """快速开始第一个代码块里的命令（去掉注释）。"""
    lines = (line.split("#", 1)[0].strip() for line in _bash_blocks("快速开始")[0].splitlines())
    return [line for line in lines if line]


def stated_ready_minutes() -> int:
    """README 承诺的新克隆就绪时间（分钟）。"""
    match = re.search(r"`make run` 不超过 (\d+) 分钟就绪", _section("快速开始"))
    assert match, "README 的快速开始没有写明就绪时间"
    return int(match.group(1))


@dataclass
class Clone:
    """一个新克隆与它跑过的命令的输出。"""

    path: Path
    env: dict[str, str]
    started: list[psutil.Process] = field(default_factory=list)

    def run(self, command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """在克隆里用 bash 执行一条 README 里的命令，合并输出。"""
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.path,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def head_pid(self) -> int | None:
        """make run 记下的 head PID（没有运行时为 None）。"""
        pid_file = self.path / ".run" / "head.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    path = tmp_path_factory.mktemp("quickstart") / "report-engine"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(path)], check=True)
    env = {
        k: v for k, v in os.environ.items() if k not in _INHERITED and not k.startswith("REPORTS_")
    }
    fresh = Clone(path=path, env=env)
    try:
        yield fresh
    finally:
        if fresh.head_pid() is not None:
            fresh.run("make stop", timeout_s=180)
        # 克隆里有整个虚拟环境（几 GB）：用完即删
        shutil.rmtree(path.parent, ignore_errors=True)


def test_quickstart_shows_run_demo_stop() -> None:
    assert quickstart_commands() == ["make run", "make demo", "make stop"]


def test_stop_when_nothing_runs_says_so(clone: Clone) -> None:
    result = clone.run("make stop", timeout_s=60)
    assert result.returncode == 0, result.stdout
    assert "服务未在运行" in result.stdout


@pytest.mark.timeout(1800)
def test_make_run_on_a_fresh_clone_is_ready_in_the_stated_time(clone: Clone) -> None:
    assert not (clone.path / ".venv").exists() and not (clone.path / ".cache").exists()
    limit_s = stated_ready_minutes() * 60
    began = time.monotonic()
    result = clone.run(quickstart_commands()[0], timeout_s=limit_s)
    took = time.monotonic() - began
    assert result.returncode == 0, result.stdout[-5000:]
    assert "服务已就绪" in result.stdout, result.stdout[-5000:]
    assert took <= limit_s
    timing = {"make_run_fresh_clone_s": round(took, 1), "readme_limit_s": limit_s}
    (PROJECT_ROOT / ".run").mkdir(exist_ok=True)
    (PROJECT_ROOT / ".run" / "quickstart-timing.json").write_text(json.dumps(timing))
    head = clone.head_pid()
    assert head is not None
    # make run 启动的全部进程：head 用 setsid 起在自己的会话里，Ray 的各进程都在这个会话中
    clone.started = [p for p in psutil.process_iter() if _session_of(p.pid) == head]
    assert len(clone.started) >= 3, clone.started


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_make_run_again_says_already_running(clone: Clone) -> None:
    result = clone.run("make run", timeout_s=120)
    assert result.returncode == 0, result.stdout
    assert "服务已在运行" in result.stdout


@pytest.mark.timeout(600)
def test_make_demo_prints_a_verified_delivered_callback(clone: Clone) -> None:
    result = clone.run(quickstart_commands()[1], timeout_s=400)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "收到回调（签名已校验" in result.stdout, result.stdout[-5000:]
    assert '"status": "succeeded"' in result.stdout


def json_demo_command() -> str:
    """docs/api.md“报告的格式”里演示 JSON 报告的命令，原样。"""
    match = re.search(r'`(make demo ARGS="--report-type [a-z_]+")`', API)
    assert match, "docs/api.md 里没有演示 JSON 报告的 make demo 命令"
    return match.group(1)


@pytest.mark.timeout(600)
def test_the_json_report_demo_in_the_api_docs_delivers_parsed_data(clone: Clone) -> None:
    result = clone.run(json_demo_command(), timeout_s=400)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "收到回调（签名已校验" in result.stdout, result.stdout[-5000:]
    assert '"status": "succeeded"' in result.stdout, result.stdout[-5000:]
    assert '"format": "json"' in result.stdout and '"data": {' in result.stdout


@pytest.mark.timeout(600)
def test_backend_b_walkthrough_runs_as_written(clone: Clone) -> None:
    blocks = _bash_blocks("接入 backend B")
    assert len(blocks) >= 6
    # 接收方经它自己的 PID 关闭（脚本中途失败也一样）
    script = "set -euo pipefail\ntrap 'kill \"${RECEIVER_PID:-}\" 2>/dev/null || true' EXIT\n"
    result = clone.run(script + "\n".join(blocks), timeout_s=400)
    out = result.stdout
    assert result.returncode == 0, out[-5000:]
    trace_id = re.search(r"trace_id: ([0-9a-f-]{36})", out)
    assert trace_id, out
    assert f'"trace_id":"{trace_id.group(1)}"' in out.replace(" ", "")  # 状态查询
    replayed = re.findall(r"(?im)^x-trace-id: (\S+)", out)
    assert len(replayed) == 2 and replayed[0] == replayed[1], out
    assert re.search(r"(?im)^idempotent-replayed: true", out), out
    assert re.search(r"DELETE → HTTP (202|409)", out), out
    assert re.search(rf"{trace_id.group(1)} (succeeded|cancelled) verified", out), out
    assert "NOT VERIFIED" not in out


def metrics_commands() -> list[str]:
    """docs/operations.md“指标与告警”一节第一个代码块里的命令（去掉注释）。"""
    blocks = _bash_blocks("指标与告警", OPERATIONS)
    lines = (line.split("#", 1)[0].strip() for line in blocks[0].splitlines())
    return [line for line in lines if line]


@pytest.mark.timeout(600)
def test_make_metrics_scrapes_the_running_cluster(clone: Clone) -> None:
    """照 docs/operations.md 起 Prometheus：经 Ray 的服务发现文件找到 make run 的节点，
    抓到 demo 那份报告。"""
    commands = metrics_commands()
    assert commands == ["make metrics"]
    result = clone.run(commands[0], timeout_s=400)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "Prometheus 已就绪" in result.stdout, result.stdout[-5000:]
    pid = int((clone.path / ".run" / "prometheus" / "prometheus.pid").read_text())
    clone.started.append(psutil.Process(pid))
    query = f"http://127.0.0.1:{METRICS_PORT}/api/v1/query"
    deadline = time.monotonic() + 120
    accepted = 0.0
    while time.monotonic() < deadline:
        body = httpx.get(query, params={"query": "sum(ray_reports_accepted_total)"}, timeout=10)
        samples = body.json()["data"]["result"]
        accepted = float(samples[0]["value"][1]) if samples else 0.0
        if accepted >= 1:
            break
        time.sleep(2)
    assert accepted >= 1, "Prometheus 没有抓到 make demo 那份报告的 ray_reports_accepted_total"


@pytest.mark.timeout(300)
def test_make_stop_leaves_no_process_it_started(clone: Clone) -> None:
    assert clone.started, "make run 的进程没有记下"
    result = clone.run(quickstart_commands()[2], timeout_s=200)
    assert result.returncode == 0, result.stdout
    assert "已停止" in result.stdout
    _, alive = psutil.wait_procs(clone.started, timeout=30)
    assert not alive, [f"{p.pid} {p.name()}" for p in alive]
    assert clone.head_pid() is None
    assert not (clone.path / ".run" / "prometheus" / "prometheus.pid").exists()


def test_busy_port_gives_a_clear_message(clone: Clone) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", PORT))
        squatter.listen()
        result = clone.run("make run", timeout_s=300)
    assert result.returncode != 0
    assert f"端口 127.0.0.1:{PORT} 已被占用" in result.stdout, result.stdout
    assert clone.head_pid() is None
    assert "服务未在运行" in clone.run("make stop", timeout_s=60).stdout
