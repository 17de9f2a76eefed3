"""`/v1/reports`：受理、查询、取消、重新投递。"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import JSONResponse
from loguru import logger

from serve_app.http.auth import Caller, CallerDep
from serve_app.http.deps import ServicesDep
from serve_app.http.openapi import error_responses
from serve_app.ledger.records import ReportStatus
from serve_app.models.reports import ReportAccepted, ReportRequest
from serve_app.services.jobs import MAX_IDEMPOTENCY_KEY_CHARS, idempotency_key

router = APIRouter(prefix="/v1", tags=["reports"])

TraceId = Annotated[str, Path(min_length=1, max_length=64, description="受理时返回的 trace_id")]

_SUBMIT_ERRORS = error_responses(
    413,
    429,
    described={
        409: "Idempotency-Key 已用于另一个不同的请求体",
        422: "请求不合法（类型未知、输入缺失或多余、URL 错误或不安全）：message 说明哪里要改",
        503: "作业账本暂不可用：作业没有被受理，按 Retry-After 稍后重试",
    },
)
# 按 trace_id 操作的接口都可能：404 未知、422 参数不合法、503 账本暂不可用
_BY_ID_ERRORS = error_responses(404, 422, 503)


@router.post("/reports", status_code=202, response_model=ReportAccepted, responses=_SUBMIT_ERRORS)
async def submit_report(
    body: ReportRequest,
    caller: CallerDep,
    services: ServicesDep,
    idempotency: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            description="24 小时内同一 key + 同一请求体只受理一次，重放返回第一次的 202",
        ),
    ] = None,
) -> JSONResponse:
    """受理请求：作业写入账本后返回 202 与 trace_id，报告稍后回调。"""
    key = idempotency_key(idempotency, caller.name, body)
    trace_id = services.trace_ids()
    with logger.contextualize(trace_id=trace_id):
        job = await services.submissions.accept(body, trace_id, caller.name)
        admitting = time.perf_counter()
        record, replayed = await services.jobs.admit(job, key)
        ledger_ms = (time.perf_counter() - admitting) * 1000
    trace_id = record.trace_id
    with logger.contextualize(trace_id=trace_id):
        if replayed:
            logger.info("幂等重放：返回已受理的作业")
        else:
            logger.info(
                "已受理：report_type={} caller={} callback={}",
                job.report_type,
                job.caller,
                job.callback_url,
            )
    # 写账本（202 之前的持久化）花了多久；应用里的总时间由中间件另写一条 Server-Timing
    headers = {"X-Trace-Id": trace_id, "Server-Timing": f"ledger;dur={ledger_ms:.1f}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        status_code=202, content=ReportAccepted(trace_id=trace_id).model_dump(), headers=headers
    )


@router.get("/reports/{trace_id}", response_model=ReportStatus, responses=_BY_ID_ERRORS)
async def get_report(trace_id: TraceId, caller: CallerDep, services: ServicesDep) -> ReportStatus:
    """作业的当前状态、结果与回调投递情况（别的调用方的作业答 404）。"""
    return await services.jobs.status(trace_id, _scope(caller))


@router.delete(
    "/reports/{trace_id}",
    status_code=202,
    response_model=ReportStatus,
    responses={**_BY_ID_ERRORS, **error_responses(described={409: "作业已产生结果，不能再取消"})},
)
async def cancel_report(
    trace_id: TraceId, caller: CallerDep, services: ServicesDep
) -> ReportStatus:
    """取消尚未完成的作业：生成在引擎里中止，随后送出一个 cancelled 回调。"""
    return await services.jobs.cancel(trace_id, _scope(caller))


@router.post(
    "/reports/{trace_id}/redeliver",
    status_code=202,
    response_model=ReportStatus,
    responses={**_BY_ID_ERRORS, **error_responses(described={409: "作业尚无结果可投递"})},
)
async def redeliver_report(
    trace_id: TraceId, caller: CallerDep, services: ServicesDep
) -> ReportStatus:
    """立即重新投递结果回调（webhook-id 不变，接收方可去重）。"""
    return await services.jobs.redeliver(trace_id, _scope(caller))


def _scope(caller: Caller) -> str | None:
    """按 trace_id 操作时能看到谁的作业：管理员看全部（None），其余只看自己的。"""
    return None if caller.admin else caller.name
