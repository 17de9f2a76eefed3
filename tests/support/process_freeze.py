"""暂停/恢复一个进程的全部子孙进程（SIGSTOP / SIGCONT），用于故障注入。

vLLM 的引擎核心与 worker 是服务进程（或 LLMServer 副本）的子进程：只冻住它们，服务进程
照常收发 HTTP、转发取消，引擎在冻住期间一个 token 也不生成。只按调用方给出的 PID 找进程。
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psutil


@contextmanager
def frozen_descendants(pid: int) -> Iterator[list[int]]:
    """冻住 pid 的全部子孙进程（pid 本身照常运行），退出时恢复；产出被冻住的 PID。"""
    children = psutil.Process(pid).children(recursive=True)
    assert children, f"进程 {pid} 没有子进程可冻结"
    frozen: list[psutil.Process] = []
    try:
        for child in children:
            child.suspend()
            frozen.append(child)
        yield [child.pid for child in frozen]
    finally:
        for child in frozen:
            try:
                child.resume()
            except psutil.NoSuchProcess:
                pass
