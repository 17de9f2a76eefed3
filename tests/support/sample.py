"""测试共用的请求样例与设置构造。"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import JsonValue

from serve_app.core.errors import ErrorCode
from serve_app.core.settings import Settings
from serve_app.models.reports import CallbackPayload, ReportJob
from serve_app.prompting.catalog import TemplateCatalog

# 一个成功作业在账本里经过的全部状态
SUCCEEDED_HISTORY = ["accepted", "rendering", "generating", "delivering", "succeeded"]

# 单元层的作业策略：租约、续租、扫描与重投都以十分之一秒计，接手与重投在测试里几百毫秒内发生
FAST_JOBS: dict[str, Any] = {
    "lease_s": 0.4,
    "heartbeat_s": 0.1,
    "sweep_interval_s": 0.05,
    "redelivery_schedule_s": (0.1,),
    "redelivery_horizon_s": 60,
    "drain_timeout_s": 0.2,
}


def load_catalog() -> TemplateCatalog:
    """仓库自带的模板目录。"""
    settings = make_settings()
    return TemplateCatalog.from_file(settings.resolved_templates_path)


def make_settings(**overrides: Any) -> Settings:
    """不读 .env 与环境变量的设置（测试互不干扰）。"""
    base: dict[str, Any] = {
        "engine": {"model_source": "unused-in-unit-tests"},
        "auth_required": False,
        "callback_allow_loopback": True,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)


def sales_request(callback_url: str, **overrides: Any) -> dict[str, Any]:
    """一个合法的 sales_weekly 请求体。"""
    body: dict[str, Any] = {
        "report_type": "sales_weekly",
        "inputs": {
            "period": "2026-11-16 至 2026-11-22",
            "region": "华东区",
            "sales_data": "销售额 320 万元，环比 +8%。",
        },
        "length": "short",
        "callback_url": callback_url,
        "metadata": {"order": 42, "tags": ["周报"]},
    }
    body.update(overrides)
    return body


def failed_payload(trace_id: str = "t-1") -> CallbackPayload:
    """一个 failed 回调载荷（投递相关测试用）。"""
    job = ReportJob(
        trace_id=trace_id,
        report_type="sales_weekly",
        inputs={},
        length="short",
        callback_url="http://127.0.0.1/",
        metadata={"order": 1},
        created_at=datetime.now(UTC),
    )
    return CallbackPayload.failed(job, ErrorCode.LLM_ERROR, "boom")


# 请求自带的一个小 schema（标题 + 0–10 的整数分）：约束解码下小模型也写得完（单元与 e2e 共用）
SCORE_SCHEMA: dict[str, JsonValue] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "score"],
    "properties": {
        "title": {"type": "string"},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
    },
}
