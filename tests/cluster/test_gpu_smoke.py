"""`cluster/gpu_smoke.sh` 照 docs/operations.md 运行：CPU 上走与 GPU 相同的路径
（起节点、部署、交报告、回调）。

本模块不用多节点层的共享集群，自己起、自己关；文件名排在 test_multinode 之前，两套集群不会同时在跑。
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil

from serve_app.core.settings import PROJECT_ROOT
from tests.support.waiting import wait_until

REPORTS = 3


def _ray_processes() -> set[int]:
    """还活着的 raylet / gcs_server（已退出、等着被回收的僵尸不算）。"""
    names = {"raylet", "gcs_server"}
    return {
        p.pid
        for p in psutil.process_iter(["name", "status"])
        if p.info["name"] in names and p.info["status"] != psutil.STATUS_ZOMBIE
    }


def test_gpu_smoke_script_proves_the_path_on_cpu(tmp_path: Path) -> None:
    before = _ray_processes()
    result = subprocess.run(
        ["cluster/gpu_smoke.sh", "--device", "cpu", "--reports", str(REPORTS)]
        + ["--workdir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # 标准输出只有一行 JSON 汇总（脚本的输出可以被捕获使用）
    [line] = result.stdout.splitlines()
    summary = json.loads(line)
    assert summary["ok"] is True and summary["device"] == "cpu"
    assert summary["succeeded"] == summary["reports"] == REPORTS
    assert summary["completion_tokens"] > 0 and summary["tokens_per_s"] > 0
    # 它起的 Ray 节点都已关掉（经自己的 PID 与进程组）
    wait_until(lambda: _ray_processes() <= before, what="冒烟起的 Ray 进程退出", timeout_s=30)
    assert (tmp_path / "head.log").exists() and (tmp_path / "worker.log").exists()


def test_gpu_smoke_without_a_gpu_says_so_and_fails(tmp_path: Path) -> None:
    # 这台机器没有 NVIDIA 驱动：不去部署，直接说明并以非零退出
    result = subprocess.run(
        ["cluster/gpu_smoke.sh", "--workdir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "nvidia-smi" in result.stderr and not result.stdout
    assert not (tmp_path / "head.log").exists()
