"""副本的垃圾回收设置：启动时的对象进永久代，第 0 代阈值调高，第 1、2 代不变。"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from serve_app.core.heap import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_settling_freezes_startup_objects_and_raises_only_the_young_threshold() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    startup = [["留在堆里", i] for i in range(100)]  # 列表总被回收器跟踪
    settle_heap()
    assert gc.get_freeze_count() >= len(startup)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    # 冻结的对象不在任何一代里：全量回收不再扫描它们
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(o) in tracked for o in startup)
    gc.unfreeze()
    assert {id(o) for o in gc.get_objects()} >= {id(o) for o in startup}
