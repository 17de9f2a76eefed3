"""把错误映射成统一的 HTTP 错误体 `{"error": {"code", "message"}}`。"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from serve_app.core.errors import ErrorCode, ReportError, error_info


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """统一的错误响应体 `{"error": {"code", "message"}}`。"""
    return JSONResponse(
        status_code=status_code,
        content={"error": {"code": code, "message": message}},
        headers=headers,
    )


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{_location(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()]
    return error_response(422, ErrorCode.INVALID_REQUEST, "请求不合法：" + "；".join(problems))


def report_error_response(exc: ReportError) -> JSONResponse:
    """业务错误 → HTTP 响应：状态码与响应头都由错误类自己给出（唯一的映射处）。"""
    if exc.http_status == 500:
        logger.opt(exception=exc).error("请求处理出现未预期的错误")
        return error_response(500, *error_info(exc))
    if exc.http_status > 500:
        logger.opt(exception=exc).error("请求失败：{}", exc.message)
    return error_response(exc.http_status, exc.code, exc.message, headers=exc.headers())


async def _report_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ReportError)
    return report_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """框架自身抛出的 HTTP 错误（404、405、无法解码的请求体等）也用统一的错误体。"""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # 请求体不是 UTF-8 / 无法解析：与其他不合法请求一样是 422
        return error_response(
            422, ErrorCode.INVALID_REQUEST, "请求体无法解析：需要 UTF-8 编码的 JSON"
        )
    headers = exc.headers
    if exc.status_code == 405:
        # 同一路径的不同方法是不同路由，Starlette 只报第一个路由的 Allow：这里汇总全部
        headers = {"Allow": ", ".join(_allowed_methods(request))}
    return error_response(exc.status_code, ErrorCode.INVALID_REQUEST, str(exc.detail), headers)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.opt(exception=exc).error("请求处理出现未预期的错误")
    return error_response(500, *error_info(exc))


def install_error_handlers(app: FastAPI) -> None:
    """注册全部错误处理器。"""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ReportError, _report_error)
    app.add_exception_handler(Exception, _unexpected_error)
