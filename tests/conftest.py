"""全局测试夹具：按目录给测试打层级标记；会话共用的真实 Postgres。"""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """整个测试会话共用一个真实的 Postgres（用到时才启动；每个测试另建一个库）。"""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()
