"""API key 鉴权：`Authorization: Bearer <key>`，常量时间比较，key 不进日志。

每把 key 属于一个调用方（`调用方:key`；只写 key 的属于 default）：作业记下创建它的调用方，
查询、取消、重投只对同一调用方（或管理员 key）可见，别人得到 404；运维接口只给管理员 key。
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve_app.core.errors import AuthError, Forbidden
from serve_app.core.settings import DEFAULT_CALLER, CallerKey
from serve_app.http.deps import ServicesDep

# auto_error=False：缺少头时由我们给出统一的 401 错误体
_bearer = HTTPBearer(auto_error=False, description="REPORTS_API_KEYS 中的任意一个 key")


@dataclass(frozen=True)
class Caller:
    """当前请求的调用方：名字（作业归属、幂等键隔离都按它）与是否管理员。"""

    name: str
    admin: bool


# 不鉴权时（本机剖面）：所有请求都是 default，且能用运维接口
_UNAUTHENTICATED = Caller(DEFAULT_CALLER, admin=True)


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """与每个 key 做常量时间比较（不提前返回，耗时不泄露匹配到第几个）。"""
    supplied = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key.encode())
    return matched


def identify(candidate: str, entries: tuple[CallerKey, ...]) -> CallerKey | None:
    """找出 candidate 是哪一把 key：逐个常量时间比较，不提前返回。"""
    supplied = candidate.encode()
    found: CallerKey | None = None
    for entry in entries:
        if hmac.compare_digest(supplied, entry.key.encode()) and found is None:
            found = entry
    return found


async def require_api_key(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """/v1/* 必须带配置的 key 之一（只在配置了 key 时挂上这个依赖）。"""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("缺少 API key：请求头加 Authorization: Bearer <key>")
    entry = identify(credentials.credentials, await services.keys.current())
    if entry is None:
        raise AuthError("API key 无效")
    request.state.authenticated = True
    request.state.caller = Caller(entry.caller, admin=entry.admin)


async def current_caller(request: Request) -> Caller:
    """当前调用方；未启用鉴权时是 default（并可用运维接口）。"""
    caller = getattr(request.state, "caller", None)
    return caller if isinstance(caller, Caller) else _UNAUTHENTICATED


async def require_admin(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    """运维接口：只有管理员 key 能用。"""
    if not caller.admin:
        raise Forbidden("运维接口只对管理员 key 开放：请用 REPORTS_ADMIN_API_KEYS 里的 key")
    return caller


# 路由参数里的写法：`caller: CallerDep`
CallerDep = Annotated[Caller, Depends(current_caller)]
