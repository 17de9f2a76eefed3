"""受理请求：按模板目录校验，补全默认值，生成作业。"""

from __future__ import annotations

from datetime import timedelta

from serve_app.core.errors import Forbidden, RequestError
from serve_app.core.settings import Settings
from serve_app.delivery.url_guard import CallbackTargetPolicy
from serve_app.models.reports import ReportJob, ReportRequest, utc_now
from serve_app.prompting.catalog import TemplateCatalog


class ReportSubmissions:
    """把合法请求变成作业；不合法抛 RequestError（HTTP 422）。"""

    def __init__(
        self, catalog: TemplateCatalog, settings: Settings, targets: CallbackTargetPolicy
    ) -> None:
        self._catalog = catalog
        self._targets = targets
        self._default_callback = (
            str(settings.default_callback_url) if settings.default_callback_url else None
        )
        self._high_callers = frozenset(settings.jobs.high_priority_callers)
        self._default_deadline_s = settings.jobs.default_deadline_s

    async def accept(self, request: ReportRequest, trace_id: str, caller: str) -> ReportJob:
        """校验并生成作业（含回调地址的 SSRF 检查）；作业记下创建它的调用方、优先级与期限。"""
        if request.priority == "high" and not ({"*", caller} & self._high_callers):
            raise Forbidden(
                f"调用方 {caller} 不能提交 priority=high（允许的调用方由运维配置 "
                "REPORTS_JOBS__HIGH_PRIORITY_CALLERS）：改用 normal 或 low"
            )
        _, length = self._catalog.validate_request(
            request.report_type, request.inputs, request.length
        )
        callback_url = str(request.callback_url) if request.callback_url else None
        callback_url = callback_url or self._default_callback
        if callback_url is None:
            raise RequestError("缺少 callback_url：请求里给出回调地址，或请运维配置默认回调地址")
        await self._targets.check_url(callback_url)
        created_at = utc_now()
        deadline_s = request.deadline_s or self._default_deadline_s
        return ReportJob(
            trace_id=trace_id,
            report_type=request.report_type,
            inputs=request.inputs,
            length=length,
            callback_url=callback_url,
            metadata=request.metadata,
            created_at=created_at,
            caller=caller,
            output_schema=request.output_schema,
            priority=request.priority,
            deadline_at=created_at + timedelta(seconds=deadline_s) if deadline_s else None,
        )
