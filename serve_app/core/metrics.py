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

# 冷启动：小模型在 2 核上约 1 分钟，GPU 上大模型几分钟；上限与 llm.cold_start_timeout_s 的最大值一致
COLD_START_BUCKETS_S: tuple[float, ...] = (
    5,
    10,
    20,
    30,
    45,
    60,
    90,
    120,
    180,
    300,
    600,
    900,
    1800,
    3600,
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

    指标的说明（Prometheus 的 HELP）用英文：Ray 只接受 ASCII 的名字与说明。

    阶段（stage 标签）：queue_wait 受理 → 开始执行（含等 LLM 冷启动）；render；generate；
    deliver 一轮投递。
    """

    def __init__(self, factory: MetricFactory | None = None) -> None:
        f = factory or NullMetricFactory()
        self.accepted = f.counter(
            "reports_accepted",
            "Reports accepted (written to the ledger, answered 202; idempotent replays excluded)",
            ("report_type",),
        )
        self.rejected = f.counter(
            "reports_rejected",
            "Submissions refused, by HTTP status (401, 413, 422, 429, 503, ...)",
            ("reason",),
        )
        self.finished = f.counter(
            "reports_finished",
            "Jobs whose result was recorded, by final status (succeeded, failed, cancelled, "
            "expired), error code (empty on success) and priority",
            ("report_type", "status", "error_code", "priority"),
        )
        self.stage_seconds = f.histogram(
            "reports_stage_seconds",
            "Seconds spent per stage: queue_wait, render, generate, deliver (one delivery round), "
            "by priority",
            LATENCY_BUCKETS_S,
            ("stage", "priority"),
        )
        self.accept_to_callback_seconds = f.histogram(
            "reports_accept_to_callback_seconds",
            "Seconds from acceptance to callback delivered, by final status",
            LATENCY_BUCKETS_S,
            ("status",),
        )
        self.callback_attempts = f.counter(
            "reports_callback_attempts",
            "Callback HTTP attempts by outcome: delivered, retryable_status, permanent_status, "
            "no_response, refused",
            ("outcome",),
        )
        self.jobs_active = f.gauge(
            "reports_jobs_active", "Jobs in the ledger that have not ended yet", ()
        )
        self.redeliveries_pending = f.gauge(
            "reports_redeliveries_pending",
            "Jobs whose callback failed and waits for a scheduled redelivery",
            (),
        )
        self.jobs_undelivered = f.gauge(
            "reports_jobs_undelivered",
            "Jobs whose callback was given up (undelivered), waiting for an operator redeliver",
            (),
        )
        self.tokens = f.counter(
            "reports_tokens",
            "Tokens used by reports, kind is prompt or completion",
            ("report_type", "kind"),
        )
        self.invalid_outputs = f.counter(
            "reports_invalid_outputs",
            "Generated reports that failed their output check, by report_type and reason "
            "(truncated, unparsable, schema, sections); counted per attempt",
            ("report_type", "reason"),
        )
        self.ledger_op_seconds = f.histogram(
            "reports_ledger_op_seconds",
            "Seconds per ledger operation as seen by the ingress, by op and outcome (ok / error; "
            "outdated: an old Ledger replica refused finish_and_deliver). With the SQLite ledger "
            "and an idle ingress, finish_and_deliver is the whole ending done by the Ledger "
            "replica, delivery included",
            LATENCY_BUCKETS_S,
            ("op", "outcome"),
        )
        self.llm_replicas = f.gauge(
            "reports_llm_replicas",
            "LLMServer replicas as seen by the ingress, by kind: running, starting "
            "(both 0 when scaled to zero)",
            ("kind",),
        )
        self.llm_cold_starts = f.counter(
            "reports_llm_cold_starts",
            "Times jobs found the LLM at zero replicas and waited for it to start, by outcome "
            "(ready, timeout = longer than llm.cold_start_timeout_s); one per ingress replica",
            ("outcome",),
        )
        self.llm_cold_start_seconds = f.histogram(
            "reports_llm_cold_start_seconds",
            "Seconds from the first job finding the LLM at zero replicas to a replica answering",
            COLD_START_BUCKETS_S,
            (),
        )
        self.recovered = f.counter(
            "reports_jobs_recovered",
            "Jobs claimed from the ledger: produce = rerun after an expired lease, "
            "deliver = delivery taken over after an expired lease, redeliver = scheduled retry",
            ("kind",),
        )
