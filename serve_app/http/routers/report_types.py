"""`GET /v1/report-types`：可用的报告类型。"""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.http.deps import ServicesDep
from serve_app.models.templates import ReportTypeInfo

router = APIRouter(prefix="/v1", tags=["reports"])


@router.get("/report-types")
async def list_report_types(
    services: ServicesDep,
) -> list[ReportTypeInfo]:
    """全部报告类型、必填输入、篇幅与 max_tokens。"""
    return services.catalog.describe()
