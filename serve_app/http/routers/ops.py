"""`/v1/ops`：运维查询。"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from serve_app.http.auth import require_admin
from serve_app.http.deps import ServicesDep
from serve_app.http.openapi import error_responses
from serve_app.ledger.records import UndeliveredList

# 只有管理员 key 能用（列表里有所有调用方的作业）
router = APIRouter(prefix="/v1/ops", tags=["ops"], dependencies=[Depends(require_admin)])


class UndeliveredQuery(BaseModel):
    """查询参数；未知参数直接 422（拼错的参数不会被悄悄忽略）。"""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(100, ge=1, le=1000, description="最多返回几条")


@router.get(
    "/undelivered", response_model=UndeliveredList, responses=error_responses(403, 422, 503)
)
async def list_undelivered(
    services: ServicesDep,
    query: Annotated[UndeliveredQuery, Query()],
) -> UndeliveredList:
    """超过重投期限（或不可重试）仍未送达的作业；可逐个 redeliver。"""
    return await services.jobs.undelivered(query.limit)
