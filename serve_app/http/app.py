"""FastAPI 应用工厂：组装路由、中间件与错误处理。不依赖 Ray，便于单元测试。"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from serve_app.http.auth import require_api_key
from serve_app.http.deps import IngressServices
from serve_app.http.errors import install_error_handlers
from serve_app.http.middleware import BodySizeLimitMiddleware, SubmitObservabilityMiddleware
from serve_app.http.openapi import error_responses, install_openapi, operation_id
from serve_app.http.routers import health, ops, report_types, reports


def create_app(services: IngressServices) -> FastAPI:
    """用给定的单例集合构造 HTTP 应用。"""
    # /docs 与 /redoc 的脚本和样式由本服务自己提供（fastapi-offline 包里的 Swagger UI 5 与 ReDoc），
    # 不从 CDN 取：内网、无外网的机器上也能打开（FastAPI 默认从 jsdelivr 加载，断网即白屏）
    app = FastAPIOffline(
        title="报告生成引擎",
        version="1.0.0",
        description="提交报告请求（202 + trace_id），报告完成后回调 callback_url。",
        generate_unique_id_function=operation_id,
    )
    app.state.services = services
    # 配置了 key 时 /v1/* 需要 Bearer key（OpenAPI 里也声明）；/healthz、/readyz 始终开放
    protected = [Depends(require_api_key)] if services.auth_enabled else []
    # /v1/* 都可能 500（细节不外露）；配置了 key 时还可能 401
    v1_errors = error_responses(500, *([401] if protected else []))
    app.include_router(reports.router, dependencies=protected, responses=v1_errors)
    app.include_router(report_types.router, dependencies=protected, responses=v1_errors)
    app.include_router(ops.router, dependencies=protected, responses=v1_errors)
    app.include_router(health.router)
    install_openapi(app, services.catalog)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=services.settings.max_body_bytes)
    # 最后加的在最外层：看得到所有被拒的提交（含 413），受理耗时也从最外层算起
    app.add_middleware(SubmitObservabilityMiddleware, rejected=services.metrics.rejected)
    return app
