"""全局测试夹具：按目录给测试打层级标记；集成与 e2e 共用一个 Ray 集群。"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import ServeCluster, start_cluster, stop_cluster

_TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/<层级>/ 下的测试自动带上对应标记，`-m unit` 等可按层运行。"""
    for item in items:
        parts = Path(str(item.path)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[ServeCluster]:
    """整个测试会话一个 Ray + Serve，结束时一定关闭。"""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster()
