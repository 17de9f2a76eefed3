"""入口副本持有的单例集合与它的唯一工厂；路由经依赖注入取用。

`IngressServices.build()` 是入口对象图的唯一装配处：Serve 副本（deployments/ingress.py）
与测试的进程内应用（tests/support/harness.py）都调它，只是传入的阶段实现不同。
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from serve_app.core.metrics import ReportMetrics
from serve_app.core.secret_files import ReloadingSecrets
from serve_app.core.settings import CallerKey, Settings, check_api_keys, split_caller_key
from serve_app.delivery.url_guard import Resolver, callback_target_policy, system_resolver
from serve_app.ledger.metered_store import metered
from serve_app.ledger.store import JobStore
from serve_app.llm.port import LLMClient
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.services.jobs import JobService
from serve_app.services.pipeline import STAGE_NOTE_AFTER_S, ReportPipeline
from serve_app.services.runner import JobRunner
from serve_app.services.settlement import Settler
from serve_app.services.stages import DeliveryStage, RenderStage
from serve_app.services.submission import ReportSubmissions

# 新作业的 trace_id 从哪里来：默认随机 UUID；Serve 副本里取 Serve 的 request_id（见 deployments/）
TraceIdSource = Callable[[], str]


def random_trace_id() -> str:
    """随机 UUID 作 trace_id。"""
    return str(uuid.uuid4())


# /readyz 问：作业要经过的阶段里哪些此刻接不了活（名字列表，空 = 都在）。Serve 副本里读控制器的
# 部署状态（见 deployments/handles/replicas.py）；进程内的阶段总是在
StagesDown = Callable[[], Awaitable[list[str]]]


async def no_stage_down() -> list[str]:
    """进程内的阶段：总是在。"""
    return []


class CallerKeySource:
    """/v1/* 接受的 key：配置里的固定值，或 api_keys_file 的当前内容（改了几秒内换上）。

    管理员 key 只来自配置（REPORTS_ADMIN_API_KEYS）。明文只在内存里用于比较。
    """

    def __init__(self, settings: Settings) -> None:
        self._static = settings.caller_keys()
        self._admins = tuple(key for key in self._static if key.admin)
        path = settings.api_keys_file
        self._file = (
            ReloadingSecrets(
                path, check_api_keys, interval_s=settings.secret_reload_s, what="API key 文件"
            )
            if path is not None
            else None
        )
        self._parsed: tuple[tuple[str, ...], tuple[CallerKey, ...]] | None = None

    @property
    def configured(self) -> bool:
        """启动时有没有 key（决定 /v1/* 挂不挂鉴权）。"""
        return bool(self._static)

    async def current(self) -> tuple[CallerKey, ...]:
        """此刻有效的全部 key。"""
        if self._file is None:
            return self._static
        entries = await self._file.current()
        if self._parsed is None or self._parsed[0] != entries:
            keys = tuple(CallerKey(*split_caller_key(e), admin=False) for e in entries)
            self._parsed = (entries, keys + self._admins)
        return self._parsed[1]


@dataclass(frozen=True)
class IngressServices:
    """入口副本的全部依赖：在副本 __init__ 中创建一次。"""

    settings: Settings
    catalog: TemplateCatalog
    submissions: ReportSubmissions
    jobs: JobService
    llm: LLMClient
    runner: JobRunner
    metrics: ReportMetrics
    trace_ids: TraceIdSource
    keys: CallerKeySource
    stages_down: StagesDown = no_stage_down

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        render: RenderStage,
        llm: LLMClient,
        delivery: DeliveryStage,
        store: JobStore,
        owner: str,
        resolver: Resolver = system_resolver,
        metrics: ReportMetrics | None = None,
        trace_ids: TraceIdSource = random_trace_id,
        settler: Settler | None = None,
        stages_down: StagesDown = no_stage_down,
    ) -> IngressServices:
        """装配入口对象图：目录、受理、流水线、执行器、作业服务；账本操作一律计时。

        settler：作业的收尾交给谁（SQLite 账本时是 Ledger 副本）；默认入口就地收尾。
        stages_down：/readyz 据此说哪些阶段还没有副本（默认都在）。"""
        metrics = metrics or ReportMetrics()
        catalog = TemplateCatalog.from_file(settings.resolved_templates_path)
        store = metered(store, metrics)
        pipeline = ReportPipeline(
            render,
            llm,
            delivery,
            metrics,
            output_retries=settings.llm.output_retries,
            # 慢的阶段要在租约的一小部分之内写下（写入同时续租）：租约很短时（测试）不靠续租撑过去
            stage_note_after_s=min(STAGE_NOTE_AFTER_S, settings.jobs.lease_s / 4),
        )
        runner = JobRunner(store, pipeline, settings.jobs, owner, metrics, settler)
        return cls(
            settings=settings,
            catalog=catalog,
            submissions=ReportSubmissions(
                catalog, settings, callback_target_policy(settings, resolver=resolver)
            ),
            jobs=JobService(store, runner, metrics),
            llm=llm,
            runner=runner,
            metrics=metrics,
            trace_ids=trace_ids,
            keys=CallerKeySource(settings),
            stages_down=stages_down,
        )

    @property
    def auth_enabled(self) -> bool:
        """配置了 key（或 key 文件）：/v1/* 要 Bearer key。"""
        return bool(self.keys.configured)


async def get_services(request: Request) -> IngressServices:
    """FastAPI 依赖：取当前应用的单例集合（async：同步依赖会被放进线程池，多两次线程交接）。"""
    services: IngressServices = request.app.state.services
    return services


# 路由参数里的依赖写法：`services: ServicesDep`
ServicesDep = Annotated[IngressServices, Depends(get_services)]
