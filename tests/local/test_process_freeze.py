"""tests.support.process_freeze：冻住子孙进程后它们不动、父进程照常，退出时（含出错）恢复。"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.process_freeze import frozen_descendants
from tests.support.waiting import wait_until

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
        wait_until(
            lambda: counter.exists() and counter.read_text(),
            what="子进程开始计数",
            timeout_s=30,
            interval_s=0.05,
        )
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
    wait_until(
        lambda: _count(counter) > stopped_at,
        what="恢复后子进程继续计数",
        timeout_s=30,
        interval_s=0.05,
    )


def test_frozen_descendants_resume_even_when_the_body_fails(
    counting_tree: tuple[subprocess.Popen[bytes], Path],
) -> None:
    parent, _ = counting_tree
    with pytest.raises(RuntimeError), frozen_descendants(parent.pid) as frozen:
        raise RuntimeError("测试体失败")
    assert all(psutil.Process(pid).status() != psutil.STATUS_STOPPED for pid in frozen)
