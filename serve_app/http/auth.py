"""API key 鉴权：`Authorization: Bearer <key>`，常量时间比较，key 不进日志。"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve_app.core.errors import AuthError
from serve_app.http.deps import ServicesDep

# auto_error=False：缺少头时由我们给出统一的 401 错误体
_bearer = HTTPBearer(auto_error=False, description="REPORTS_API_KEYS 中的任意一个 key")


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """与每个 key 做常量时间比较（不提前返回，耗时不泄露匹配到第几个）。"""
    supplied = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key.encode())
    return matched


async def require_api_key(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """/v1/* 必须带配置的 key 之一（只在配置了 key 时挂上这个依赖）。"""
    keys = services.api_keys
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("缺少 API key：请求头加 Authorization: Bearer <key>")
    if not key_matches(credentials.credentials, keys):
        raise AuthError("API key 无效")
    request.state.authenticated = True
    # 调用方身份（key 的摘要）：Idempotency-Key 按调用方隔离
    request.state.principal = hashlib.sha256(credentials.credentials.encode()).hexdigest()[:16]


def caller_principal(request: Request) -> str:
    """当前调用方的身份；未启用鉴权时所有调用方共用一个。"""
    return str(getattr(request.state, "principal", "anonymous"))
