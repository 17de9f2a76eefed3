"""`GET /healthz`（进程存活）与 `GET /readyz`（整条流水线可接活：渲染、回调、账本各有副本在跑，
LLM 有副本在跑或缩到零但能扩起来）。"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from loguru import logger

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
    responses={
        503: {
            "model": NotReady,
            "description": "LLM 部署不健康或还在首次部署，或渲染、回调、账本部署还没有运行中的副本",
        }
    },
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """LLM 有副本在跑（warm）或缩到零而能扩起来（cold）都是 200：作业照样受理，冷启动在后台等；
    LLM 部署不健康、还在首次部署，或别的阶段还没有运行中的副本（刚部署时它们可能比入口起得晚）
    时 503，message 说是哪一个。"""
    state = await services.llm.state()
    if state is EngineState.DOWN:
        return _not_ready("LLM 阶段尚不能接活")
    try:
        async with asyncio.timeout(services.settings.llm.ready_timeout_s):
            down = await services.stages_down()
    except Exception:  # noqa: BLE001 - 读不到部署状态就不说就绪
        logger.exception("/readyz 读不到各阶段的部署状态")
        return _not_ready("读不到各阶段的部署状态（Serve 控制器没有及时答复）")
    if down:
        return _not_ready(f"这些部署还没有运行中的副本：{'、'.join(down)}")
    return JSONResponse(Ready(llm=state.value).model_dump(mode="json"))


def _not_ready(message: str) -> JSONResponse:
    body = NotReady(error=ErrorBody(code=ErrorCode.NOT_READY, message=message))
    return JSONResponse(body.model_dump(mode="json"), status_code=503)
