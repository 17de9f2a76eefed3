"""入口副本持有的单例集合，路由经依赖注入取用。"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from serve_app.core.settings import Settings
from serve_app.llm.port import LLMClient
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.services.jobs import JobService
from serve_app.services.submission import ReportSubmissions


@dataclass(frozen=True)
class IngressServices:
    """入口副本的全部依赖：在副本 __init__ 中创建一次。"""

    settings: Settings
    catalog: TemplateCatalog
    submissions: ReportSubmissions
    jobs: JobService
    llm: LLMClient

    @property
    def api_keys(self) -> tuple[str, ...]:
        """/v1/* 接受的 key（明文只在内存里用于比较）。"""
        return tuple(key.get_secret_value() for key in self.settings.api_keys)


def get_services(request: Request) -> IngressServices:
    """FastAPI 依赖：取当前应用的单例集合。"""
    services: IngressServices = request.app.state.services
    return services


# 路由参数里的依赖写法：`services: ServicesDep`
ServicesDep = Annotated[IngressServices, Depends(get_services)]
