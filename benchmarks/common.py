"""基准共用的：结果另存为 *-latest.*，每次一个新的账本，起一个小模型的 vLLM 服务。"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.build_tiny_model import build_tiny_model
from serve_app.core.settings import PROJECT_ROOT
from tests.support.vllm_server import VLLMServer

SERVED_NAME = "report-llm"
RESULTS = PROJECT_ROOT / "benchmarks" / "results"
RUN_DIR = PROJECT_ROOT / ".run" / "bench"
# 基准自己与它起的服务都降优先级：机器上别的进程（含测试）不被挤掉
NICE = 15


def publish_latest(prefix: str, stamp: str, directory: Path = RESULTS) -> None:
    """<prefix>-<stamp>.{json,md,png} 另存为 <prefix>-latest.*（docs 引用带时间的那份）。"""
    for suffix in ("json", "md", "png"):
        shutil.copyfile(
            directory / f"{prefix}-{stamp}.{suffix}", directory / f"{prefix}-latest.{suffix}"
        )


def fresh_ledger(name: str, directory: Path = RUN_DIR) -> Path:
    """基准专用的 SQLite 账本：起应用前删掉上一次的（连同 -wal / -shm），返回路径。

    留着上一次的作业，A/B/A 里后跑的一方面对更大的库；用 make run 的 .run/ledger.sqlite3，
    还会把用户没投完的回调接过来重投。"""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return path


@contextmanager
def tiny_engine(log_name: str) -> Iterator[VLLMServer]:
    """本进程降到 nice 15，生成（或复用）小模型，起一个同样 nice 的 vLLM 服务（127.0.0.1），
    用完经它自己的进程组关掉。"""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.nice(NICE)
    model_dir = build_tiny_model(PROJECT_ROOT / ".cache" / "tiny-model")
    server = VLLMServer(
        model_dir, SERVED_NAME, RUN_DIR / log_name, max_model_len=4096, niceness=NICE
    )
    server.start()
    try:
        server.wait_ready(900)
        yield server
    finally:
        server.stop()
