"""`GET /healthz`（进程存活）与 `GET /readyz`（LLM 阶段可接活）。"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.core.errors import ErrorCode
from serve_app.http.deps import ServicesDep
from serve_app.models.reports import ErrorBody, NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """进程存活即 200。"""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": NotReady, "description": "LLM 阶段尚不能接活"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """LLM 阶段能接活才 200；否则 503（`status` 之外也带统一错误体）。"""
    if await services.llm.ready():
        return JSONResponse({"status": "ready"})
    body = NotReady(error=ErrorBody(code=ErrorCode.NOT_READY, message="LLM 阶段尚不能接活"))
    return JSONResponse(body.model_dump(mode="json"), status_code=503)
