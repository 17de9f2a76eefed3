"""把错误映射成统一的 HTTP 错误体 `{"error": {"code", "message"}}`。"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.core.errors import AuthError, ErrorCode, RequestError, error_info


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


async def _request_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(422, *error_info(exc))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    """框架自身抛出的 HTTP 错误（404、405、无法解码的请求体等）也用统一的错误体。"""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # 请求体不是 UTF-8 / 无法解析：与其他不合法请求一样是 422
        return error_response(
            422, ErrorCode.INVALID_REQUEST, "请求体无法解析：需要 UTF-8 编码的 JSON"
        )
    return error_response(
        exc.status_code, ErrorCode.INVALID_REQUEST, str(exc.detail), headers=exc.headers
    )


async def _auth_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(
        401, *error_info(exc), headers={"WWW-Authenticate": 'Bearer realm="reports"'}
    )


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.opt(exception=exc).error("请求处理出现未预期的错误")
    return error_response(500, *error_info(exc))


def install_error_handlers(app: FastAPI) -> None:
    """注册全部错误处理器。"""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(Exception, _unexpected_error)
