"""全局测试夹具：按目录给测试打层级标记；会话共用的真实 Postgres。"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer

# metrics 测试在 tests/e2e/ 里（共用 e2e 的集群与引擎），由模块级 pytestmark 标记
_TIERS = ("unit", "integration", "fault", "e2e", "cluster", "quickstart")
_TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/<层级>/ 下的测试自动带上对应标记，`-m unit` 等可按层运行。"""
    for item in items:
        # 只看 tests/ 下的第一级目录，仓库所在路径里碰巧有同名目录也不影响
        relative = Path(str(item.path)).resolve().relative_to(_TESTS_DIR)
        tier = relative.parts[0] if len(relative.parts) > 1 else None
        if tier in _TIERS:
            item.add_marker(getattr(pytest.mark, tier))


_exit_status: list[int] = []


def pytest_sessionfinish(exitstatus: int) -> None:
    """记下本次测试的结论（pytest_unconfigure 里按它退出）。"""
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure() -> None:
    """报告全部写完后直接以测试结论退出，跳过解释器的收尾。

    同一进程里先后起停过多次 Ray、导入过 torch / vLLM：解释器收尾时它们的原生线程偶尔段错误
    （所有测试都已通过、汇总已打印之后），退出码会变成 139，让通过的一次运行显示为失败。
    Ray、vLLM、服务器等进程都已由各自的夹具经 PID / 句柄关掉，这里不再有要收尾的东西。
    """
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """整个测试会话共用一个真实的 Postgres（用到时才启动；每个测试另建一个库）。"""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()
