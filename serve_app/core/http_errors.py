"""把错误映射成统一的 HTTP 错误体 `{"error": {"code", "message"}}`。"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger

from serve_app.core.errors import ErrorCode, RequestError, error_info


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{_location(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()]
    return JSONResponse(
        status_code=422,
        content={
            "error": {
                "code": ErrorCode.INVALID_REQUEST,
                "message": "请求不合法：" + "；".join(problems),
            }
        },
    )


async def _request_error(_: Request, exc: Exception) -> JSONResponse:
    code, message = error_info(exc)
    return JSONResponse(status_code=422, content={"error": {"code": code, "message": message}})


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.opt(exception=exc).error("请求处理出现未预期的错误")
    code, message = error_info(exc)
    return JSONResponse(status_code=500, content={"error": {"code": code, "message": message}})


def install_error_handlers(app: FastAPI) -> None:
    """注册全部错误处理器。"""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(Exception, _unexpected_error)
