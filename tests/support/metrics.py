"""测试用的指标后端：把每次记录存在内存里，按名字与标签查。"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from serve_app.core.metrics import Counter, Gauge, Histogram, ReportMetrics, Tags

Key = tuple[str, tuple[tuple[str, str], ...]]


def _key(name: str, tags: Tags | None) -> Key:
    return name, tuple(sorted((tags or {}).items()))


def _check_declaration(name: str, description: str, tag_keys: tuple[str, ...]) -> None:
    """与 Ray 的要求一致：名字与说明只能是 ASCII（否则副本启动即失败），标签不与 Serve 的重名。"""
    assert name.startswith("reports_") and name.isascii() and name.isidentifier(), name
    assert description and description.isascii(), (name, description)
    assert not {"deployment", "replica", "application", "route"} & set(tag_keys), (name, tag_keys)


@dataclass
class _Recorded:
    name: str
    tag_keys: tuple[str, ...]
    store: RecordingMetricFactory

    def _check(self, tags: Tags | None) -> Key:
        # 与 Ray 一样：标签必须是声明过的键
        unknown = set(tags or {}) - set(self.tag_keys)
        assert not unknown, f"{self.name} 没有声明标签 {unknown}"
        return _key(self.name, tags)

    def inc(self, value: float = 1.0, tags: Tags | None = None) -> None:
        self.store.counters[self._check(tags)] += value

    def observe(self, value: float, tags: Tags | None = None) -> None:
        self.store.observations[self._check(tags)].append(value)

    def set(self, value: float, tags: Tags | None = None) -> None:
        self.store.gauges[self._check(tags)] = value


@dataclass
class RecordingMetricFactory:
    """MetricFactory 的内存实现。"""

    counters: defaultdict[Key, float] = field(default_factory=lambda: defaultdict(float))
    observations: defaultdict[Key, list[float]] = field(default_factory=lambda: defaultdict(list))
    gauges: dict[Key, float] = field(default_factory=dict)

    def counter(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Counter:
        _check_declaration(name, description, tag_keys)
        return _Recorded(name, tag_keys, self)

    def histogram(
        self, name: str, description: str, boundaries: Sequence[float], tag_keys: tuple[str, ...]
    ) -> Histogram:
        _check_declaration(name, description, tag_keys)
        assert list(boundaries) == sorted(boundaries), name
        return _Recorded(name, tag_keys, self)

    def gauge(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Gauge:
        _check_declaration(name, description, tag_keys)
        return _Recorded(name, tag_keys, self)

    def metrics(self) -> ReportMetrics:
        """记到本对象里的 ReportMetrics。"""
        return ReportMetrics(self)

    def count(self, name: str, **tags: str) -> float:
        """计数器在这组标签下的值。"""
        return self.counters.get(_key(name, tags), 0.0)

    def observed(self, name: str, **tags: str) -> list[float]:
        """直方图在这组标签下的观测值。"""
        return self.observations.get(_key(name, tags), [])

    def gauge_value(self, name: str) -> float | None:
        """（无标签的）仪表的当前值。"""
        return self.gauges.get(_key(name, None))
