"""测试用的集群小工具：引擎 CPU 绑定按“亲和性 ∩ cgroup 配额”计算；冻结子孙进程后它们不动。"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cluster import cpu_binding
from cluster.process_freeze import frozen_descendants


@pytest.fixture
def cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """把 cgroup v2 的 cpu.max 换成临时文件，v1 的文件指向不存在的路径。"""
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(cpu_binding, "_CGROUP_V2_MAX", cpu_max)
    monkeypatch.setattr(cpu_binding, "_CGROUP_V1_QUOTA", tmp_path / "missing")
    return cpu_max


def _affinity(monkeypatch: pytest.MonkeyPatch, cpus: set[int]) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: cpus)


def test_quota_caps_the_engine_threads_on_a_big_host(
    cgroup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 容器看得见 64 个核，配额只有 2 个：引擎只拿 1 个核，另一个留给控制面
    _affinity(monkeypatch, set(range(64)))
    cgroup.write_text("200000 100000\n", encoding="ascii")
    assert cpu_binding.cgroup_cpu_limit() == 2.0
    assert cpu_binding.usable_cpu_ids() == [0, 1]
    assert cpu_binding.engine_cpu_env() == {"VLLM_CPU_OMP_THREADS_BIND": "0"}


def test_fractional_quota_rounds_up(cgroup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _affinity(monkeypatch, {4, 5, 6, 7})
    cgroup.write_text("250000 100000\n", encoding="ascii")
    assert cpu_binding.usable_cpu_ids() == [4, 5, 6]
    assert cpu_binding.engine_cpu_env() == {"VLLM_CPU_OMP_THREADS_BIND": "4,5"}


def test_no_quota_uses_the_affinity(cgroup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _affinity(monkeypatch, {0, 1})
    cgroup.write_text("max 100000\n", encoding="ascii")
    assert cpu_binding.cgroup_cpu_limit() is None
    assert cpu_binding.engine_cpu_ids() == [0]


@pytest.mark.usefixtures("cgroup")
def test_single_cpu_still_gets_the_engine_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    _affinity(monkeypatch, {3})
    assert cpu_binding.cgroup_cpu_limit() is None  # 文件不存在
    assert cpu_binding.engine_cpu_env() == {"VLLM_CPU_OMP_THREADS_BIND": "3"}


def test_unreadable_quota_is_ignored(cgroup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _affinity(monkeypatch, {0, 1, 2})
    cgroup.write_text("garbage\n", encoding="ascii")
    assert cpu_binding.cgroup_cpu_limit() is None
    assert "engine_cpus=[0, 1]" in cpu_binding.describe_cpus()


# 父进程起一个子进程，子进程不停地往文件里追加计数
_COUNTING_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
while True:
    time.sleep(0.05)
"""
_COUNTING_CHILD = """
import sys, time
n = 0
while True:
    n += 1
    with open(sys.argv[1], "w") as f:
        f.write(str(n))
    time.sleep(0.01)
"""


@pytest.fixture
def counting_tree(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """一个父进程 + 一个计数的子进程；经自己的句柄整树关闭。"""
    counter = tmp_path / "count"
    parent = subprocess.Popen(
        [sys.executable, "-c", _COUNTING_PARENT, _COUNTING_CHILD, str(counter)]
    )
    try:
        deadline = time.monotonic() + 30
        while not (counter.exists() and counter.read_text()):
            assert time.monotonic() < deadline, "子进程没有开始计数"
            time.sleep(0.05)
        yield parent, counter
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait(timeout=10)


def _count(counter: Path) -> int:
    text = counter.read_text()
    return int(text) if text else 0


def test_frozen_descendants_stop_until_resumed(
    counting_tree: tuple[subprocess.Popen[bytes], Path],
) -> None:
    parent, counter = counting_tree
    with frozen_descendants(parent.pid) as frozen:
        assert len(frozen) == 1 and parent.pid not in frozen
        time.sleep(0.3)  # 冻住前最后一次写入落地
        stopped_at = _count(counter)
        time.sleep(0.5)
        assert _count(counter) == stopped_at
        assert psutil.Process(parent.pid).status() != psutil.STATUS_STOPPED
    deadline = time.monotonic() + 30
    while _count(counter) <= stopped_at:
        assert time.monotonic() < deadline, "恢复后子进程没有继续"
        time.sleep(0.05)


def test_frozen_descendants_resume_even_when_the_body_fails(
    counting_tree: tuple[subprocess.Popen[bytes], Path],
) -> None:
    parent, _ = counting_tree
    with pytest.raises(RuntimeError), frozen_descendants(parent.pid) as frozen:
        raise RuntimeError("测试体失败")
    assert all(psutil.Process(pid).status() != psutil.STATUS_STOPPED for pid in frozen)
