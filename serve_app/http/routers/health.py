"""`GET /healthz`（进程存活）与 `GET /readyz`（LLM 阶段可接活：有副本在跑，或缩到零但能扩起来）。"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.core.errors import ErrorCode
from serve_app.http.deps import ServicesDep
from serve_app.llm.port import EngineState
from serve_app.models.reports import ErrorBody, NotReady, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """进程存活即 200。"""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": NotReady, "description": "LLM 部署不健康或还在首次部署"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """LLM 有副本在跑（warm）或缩到零而能扩起来（cold）都是 200：作业照样受理，冷启动在后台等；
    只有 LLM 部署不健康、还在首次部署时才 503。"""
    state = await services.llm.state()
    if state is not EngineState.DOWN:
        return JSONResponse(Ready(llm=state.value).model_dump(mode="json"))
    body = NotReady(error=ErrorBody(code=ErrorCode.NOT_READY, message="LLM 阶段尚不能接活"))
    return JSONResponse(body.model_dump(mode="json"), status_code=503)
