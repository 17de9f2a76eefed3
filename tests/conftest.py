"""全局测试夹具：按目录给测试打层级标记。"""

from __future__ import annotations

from pathlib import Path

import pytest

_TIERS = ("unit", "integration", "e2e", "cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/<层级>/ 下的测试自动带上对应标记，`-m unit` 等可按层运行。"""
    for item in items:
        parts = Path(str(item.path)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
