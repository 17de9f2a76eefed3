"""OpenAPI 文档就是完整契约：错误体、回调（webhooks）、每个报告类型一个请求示例。

- 每个 4xx/5xx 响应都声明统一的错误体 `ErrorResponse`（`error_responses()`）；
- backend B 收到的回调声明成 OpenAPI 3.1 的 webhook `report-callback`（载荷、请求头、状态码）；
- `POST /v1/reports` 的请求示例按模板目录生成（每个报告类型一个，可直接提交）。
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Header
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from serve_app.models.reports import CallbackPayload, ErrorResponse
from serve_app.prompting.catalog import TemplateCatalog

# 状态码的默认说明；路由可给更具体的说明
_DEFAULT_DESCRIPTIONS: dict[int, str] = {
    401: "缺少或错误的 API key（Authorization: Bearer <key>）",
    403: "key 有效但无权访问（运维接口只对 REPORTS_ADMIN_API_KEYS 开放）",
    404: "没有这个 trace_id 的作业",
    409: "作业当前状态不允许该操作",
    413: "请求体超过上限（REPORTS_MAX_BODY_BYTES）",
    422: "请求不合法：message 说明哪里要改",
    429: "排队的作业已满：按 Retry-After 秒数稍后重试",
    500: "内部错误：细节只在日志里，凭 trace_id 排查",
    503: "暂不可用：按 Retry-After 秒数稍后重试（作业没有被受理，可安全重试）",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "建议多少秒后重试", "schema": {"type": "integer", "minimum": 1}}
}


def error_responses(
    *codes: int, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """给 FastAPI 的 `responses=`：这些状态码（及 `described` 的键）的响应体都是 ErrorResponse。

    `described` 给出比默认更具体的说明。
    """
    described = described or {}
    responses: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, *described}):
        entry: dict[str, Any] = {
            "model": ErrorResponse,
            "description": described.get(code, _DEFAULT_DESCRIPTIONS.get(code, "错误")),
        }
        if code in (429, 503):
            entry["headers"] = _RETRY_AFTER
        responses[code] = entry
    return responses


def operation_id(route: APIRoute) -> str:
    """operationId 用处理函数名（submit_report、get_report、report_callback……）：由 /openapi.json
    生成的客户端方法名就是它；FastAPI 默认的 submit_report_v1_reports_post 把路径和方法拼进去。"""
    return route.name


def _install_callback_webhook(app: FastAPI) -> None:
    @app.webhooks.post(
        "report-callback",
        # webhooks 是 FastAPI 另建的路由器，不带应用的 generate_unique_id_function
        generate_unique_id_function=operation_id,
        summary="报告回调：引擎 POST 到 callback_url",
        description=(
            "每个受理的作业以一次终态回调结束（succeeded / failed / cancelled / expired）。"
            "只有 2xx 算送达；网络错误、超时、429、5xx 按指数退避加抖动重试并尊重 Retry-After，"
            "之后按持久化重投表继续（默认 24 小时）；3xx（不跟随重定向）、410 与其余 4xx 不重试。"
            "同一作业的每次投递 webhook-id 相同：接收方按它去重（投递是至少一次）。"
            "配置了签名密钥时按 Standard Webhooks 签名，用 standardwebhooks 库校验。"
        ),
        responses={
            "2XX": {"description": "已收下（请尽快答复，耗时的处理放到之后）"},
            410: {"description": "接收端已不存在：不再投递"},
            429: {"description": "请慢一点：按 Retry-After 重试"},
            "5XX": {"description": "暂时失败：稍后重试"},
        },
        tags=["callbacks"],
    )
    async def report_callback(
        payload: CallbackPayload,
        webhook_id: Annotated[
            str,
            Header(alias="webhook-id", description="msg_<trace_id>：同一作业的每次投递都相同"),
        ],
        x_trace_id: Annotated[str, Header(alias="X-Trace-Id", description="作业的 trace_id")],
        webhook_timestamp: Annotated[
            str | None,
            Header(alias="webhook-timestamp", description="签名时间（Unix 秒）；配置了密钥时才有"),
        ] = None,
        webhook_signature: Annotated[
            str | None,
            Header(
                alias="webhook-signature", description="v1,<base64 HMAC-SHA256>；配置了密钥时才有"
            ),
        ] = None,
    ) -> None:
        """只用于文档：描述 backend B 收到的请求。"""
        del payload, webhook_id, x_trace_id, webhook_timestamp, webhook_signature


def _request_examples(catalog: TemplateCatalog) -> dict[str, dict[str, Any]]:
    return {
        info.name: {
            "summary": f"{info.title}（{info.name}）",
            "value": {
                "report_type": info.name,
                "inputs": info.example_inputs,
                "length": info.default_length,
                "callback_url": "https://backend-b.example/hooks/reports",
                "metadata": {"order": 42},
            },
        }
        for info in catalog.describe()
    }


def install_openapi(app: FastAPI, catalog: TemplateCatalog) -> None:
    """回调 webhook 与请求示例写进 app 的 OpenAPI 文档（生成一次后缓存）。"""
    _install_callback_webhook(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                webhooks=app.webhooks.routes,
                tags=app.openapi_tags,
            )
            body = schema["paths"]["/v1/reports"]["post"]["requestBody"]
            body["content"]["application/json"]["examples"] = _request_examples(catalog)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
