"""`POST /v1/reports`：受理报告请求。"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends
from fastapi.responses import JSONResponse
from loguru import logger

from serve_app.core.services import IngressServices, get_services
from serve_app.models.reports import ReportAccepted, ReportRequest

router = APIRouter(prefix="/v1", tags=["reports"])

_ERRORS: dict[int | str, dict[str, str]] = {
    413: {"description": "请求体过大"},
    422: {"description": "请求不合法（类型未知、输入缺失或多余、URL 错误或不安全）"},
}


@router.post("/reports", status_code=202, response_model=ReportAccepted, responses=_ERRORS)
async def submit_report(
    body: ReportRequest,
    background: BackgroundTasks,
    services: Annotated[IngressServices, Depends(get_services)],
) -> JSONResponse:
    """受理请求：返回 202 与 trace_id，报告稍后回调。"""
    trace_id = str(uuid.uuid4())
    with logger.contextualize(trace_id=trace_id):
        job = await services.submissions.accept(body, trace_id)
        background.add_task(services.pipeline.run, job)
        logger.info("已受理：report_type={} callback={}", job.report_type, job.callback_url)
    return JSONResponse(
        status_code=202,
        content=ReportAccepted(trace_id=trace_id).model_dump(),
        headers={"X-Trace-Id": trace_id},
    )
