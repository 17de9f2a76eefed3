"""作业生命周期的指标：名字、说明、标签与桶只在这里定义一次。

记到哪里由注入的 `MetricFactory` 决定：Serve 副本里是 `ray.serve.metrics`（deployments/metrics.py，
Ray 导出时加前缀 `ray_`），单元测试里是内存记录器，默认什么也不记。本模块不导入 Ray。
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

# 延迟直方图的桶（秒）：从毫秒级的账本操作到分钟级的生成
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

Tags = Mapping[str, str]


class Counter(Protocol):
    """只增的计数。"""

    def inc(self, value: float = 1.0, tags: Tags | None = None) -> None:
        """加 value。"""
        ...


class Histogram(Protocol):
    """分布（延迟等）。"""

    def observe(self, value: float, tags: Tags | None = None) -> None:
        """记一个观测值。"""
        ...


class Gauge(Protocol):
    """当前值。"""

    def set(self, value: float, tags: Tags | None = None) -> None:
        """设为 value。"""
        ...


class MetricFactory(Protocol):
    """创建指标的后端（Ray、测试记录器……）。"""

    def counter(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Counter:
        """创建计数器。"""
        ...

    def histogram(
        self, name: str, description: str, boundaries: Sequence[float], tag_keys: tuple[str, ...]
    ) -> Histogram:
        """创建直方图。"""
        ...

    def gauge(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Gauge:
        """创建仪表。"""
        ...


class _Noop:
    """什么也不记的指标。"""

    def inc(self, value: float = 1.0, tags: Tags | None = None) -> None:
        del value, tags

    def observe(self, value: float, tags: Tags | None = None) -> None:
        del value, tags

    def set(self, value: float, tags: Tags | None = None) -> None:
        del value, tags


class NullMetricFactory:
    """默认后端：不记录（单元测试、脚本）。"""

    def counter(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Counter:
        """不记录的计数器。"""
        del name, description, tag_keys
        return _Noop()

    def histogram(
        self, name: str, description: str, boundaries: Sequence[float], tag_keys: tuple[str, ...]
    ) -> Histogram:
        """不记录的直方图。"""
        del name, description, boundaries, tag_keys
        return _Noop()

    def gauge(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Gauge:
        """不记录的仪表。"""
        del name, description, tag_keys
        return _Noop()


class ReportMetrics:
    """一个副本里的全部业务指标（每个进程创建一次，传给各组件）。

    阶段（stage 标签）：queue_wait 受理 → 开始执行；render；generate；deliver 一轮投递。
    """

    def __init__(self, factory: MetricFactory | None = None) -> None:
        f = factory or NullMetricFactory()
        self.accepted = f.counter(
            "reports_accepted",
            "受理的报告请求（已写入账本、答 202；幂等重放不计）",
            ("report_type",),
        )
        self.rejected = f.counter(
            "reports_rejected",
            "被拒绝的提交请求，按 HTTP 状态码（401/413/422/429/503 等）",
            ("reason",),
        )
        self.finished = f.counter(
            "reports_finished",
            "产生了结果的作业，按终态与错误码（成功时 error_code 为空）",
            ("report_type", "status", "error_code"),
        )
        self.stage_seconds = f.histogram(
            "reports_stage_seconds",
            "各阶段耗时（秒）：queue_wait、render、generate、deliver",
            LATENCY_BUCKETS_S,
            ("stage",),
        )
        self.accept_to_callback_seconds = f.histogram(
            "reports_accept_to_callback_seconds",
            "受理到回调送达的时间（秒），按终态",
            LATENCY_BUCKETS_S,
            ("status",),
        )
        self.callback_attempts = f.counter(
            "reports_callback_attempts",
            "回调的每次 HTTP 尝试，按结果：delivered、retryable_status、permanent_status、"
            "no_response、refused",
            ("outcome",),
        )
        self.jobs_active = f.gauge("reports_jobs_active", "账本里尚未结束的作业数", ())
        self.redeliveries_pending = f.gauge(
            "reports_redeliveries_pending", "投递失败、等待按重投表再投的作业数", ()
        )
        self.jobs_undelivered = f.gauge(
            "reports_jobs_undelivered", "已放弃自动重投、等运维 redeliver 的作业数", ()
        )
        self.tokens = f.counter(
            "reports_tokens",
            "生成报告用掉的 token，kind 为 prompt 或 completion",
            ("report_type", "kind"),
        )
        self.ledger_op_seconds = f.histogram(
            "reports_ledger_op_seconds",
            "入口副本看到的账本操作耗时（秒），按操作与结果（ok / error）",
            LATENCY_BUCKETS_S,
            ("op", "outcome"),
        )
        self.recovered = f.counter(
            "reports_jobs_recovered",
            "从账本领取的作业：produce 为租约过期后重新执行，deliver 为只投递（接手或到期重投）",
            ("kind",),
        )
