"""ReportMetrics 的 Ray 后端：`ray.serve.metrics`（自动带 deployment / replica / application 标签，
经每个节点的指标代理导出，名字加前缀 `ray_`，计数器另加 `_total`）。"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from ray.serve import metrics as serve_metrics

from serve_app.core.metrics import Counter, Gauge, Histogram, ReportMetrics, Tags


class _RayCounter:
    def __init__(self, metric: serve_metrics.Counter) -> None:
        self._metric = metric

    def inc(self, value: float = 1.0, tags: Tags | None = None) -> None:
        # Ray 会往传入的字典里补标签：每次给一份新的
        self._metric.inc(value, dict(tags or {}))


class _RayHistogram:
    def __init__(self, metric: serve_metrics.Histogram) -> None:
        self._metric = metric

    def observe(self, value: float, tags: Tags | None = None) -> None:
        self._metric.observe(value, dict(tags or {}))


class _RayGauge:
    def __init__(self, metric: serve_metrics.Gauge) -> None:
        self._metric = metric

    def set(self, value: float, tags: Tags | None = None) -> None:
        self._metric.set(value, dict(tags or {}))


def _keys(tag_keys: tuple[str, ...]) -> tuple[str] | None:
    # Ray 的注解写成 tuple[str]，实际接受任意长度的元组
    return cast(tuple[str], tag_keys) if tag_keys else None


class RayMetricFactory:
    """在 Serve 副本里创建 Ray 指标（须在副本进程内调用）。"""

    def counter(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Counter:
        """Ray 计数器。"""
        return _RayCounter(serve_metrics.Counter(name, description, _keys(tag_keys)))

    def histogram(
        self, name: str, description: str, boundaries: Sequence[float], tag_keys: tuple[str, ...]
    ) -> Histogram:
        """Ray 直方图。"""
        return _RayHistogram(
            serve_metrics.Histogram(name, description, list(boundaries), _keys(tag_keys))
        )

    def gauge(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Gauge:
        """Ray 仪表。"""
        return _RayGauge(serve_metrics.Gauge(name, description, _keys(tag_keys)))


def replica_metrics() -> ReportMetrics:
    """本副本的业务指标（在副本的 __init__ 里调用一次）。"""
    return ReportMetrics(RayMetricFactory())
