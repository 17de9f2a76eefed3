"""小规模跑一个基准脚本（python -m benchmarks.<名字>）：测试只看它跑通、写出了结果文件。"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from serve_app.core.settings import PROJECT_ROOT


def run_benchmark(module: str, *args: str, timeout_s: float = 300) -> str:
    """在仓库根目录运行 benchmarks.<module>，退出码非 0 时带着 stderr 失败；返回 stdout。"""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def stop_midway(
    module: str, *args: str, started: Callable[[list[psutil.Process]], bool], settle_s: float = 3
) -> list[str]:
    """起 python -m benchmarks.<module>（自成会话），等它起的进程满足 started、再跑 settle_s 秒，
    只对它自己的 PID 发 SIGTERM；返回它退出后 30 秒仍在的、它起的进程（空表 = 收尾干净）。

    无论结果如何，最后按 PID 杀掉基准与它起过的进程，不留给后面的测试。"""
    process = subprocess.Popen(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    benchmark = psutil.Process(process.pid)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not started(children):
            assert time.monotonic() < deadline, f"两分钟内 {module} 没有起来要等的进程"
            assert process.poll() is None, f"{module} 提前退出了：{process.returncode}"
            time.sleep(0.2)
            children = benchmark.children(recursive=True)
        time.sleep(settle_s)
        children = benchmark.children(recursive=True)
        assert process.poll() is None, f"{module} 提前退出了：{process.returncode}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) != 0
        _, alive = psutil.wait_procs(children, timeout=30)
        return [process_title(p) for p in alive]
    finally:
        for leftover in [benchmark, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


def process_title(process: psutil.Process) -> str:
    """进程的命令行（已退出的为空串）。"""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""
