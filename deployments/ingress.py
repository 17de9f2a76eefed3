"""ReportIngress 部署：FastAPI 入口，持有流水线与 LLM 客户端。"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from fastapi import FastAPI
from loguru import logger
from ray import serve
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle

from deployments.handles.ledger_client import LedgerClient, LedgerSettlement, ledger_client
from deployments.handles.replicas import StagesWithoutReplicas
from deployments.handles.request_context import serve_request_trace_id
from deployments.handles.serve_llm import ServeLLMClient
from deployments.handles.stages import HandleDeliveryStage, HandleRenderStage
from deployments.handles.transport import light_handle
from deployments.metrics import replica_metrics
from deployments.ray_private import by_reference
from serve_app.core.logging import configure_logging
from serve_app.core.metrics import ReportMetrics
from serve_app.core.settings import HandleTransport, LLMMode, Settings
from serve_app.http.app import create_app
from serve_app.http.deps import IngressServices
from serve_app.ledger.postgres_store import PostgresJobStore
from serve_app.ledger.store import JobStore
from serve_app.llm.openai_compat import OpenAICompatClient
from serve_app.llm.port import LLMClient
from serve_app.services.settlement import Settler


def make_llm_client(
    settings: Settings, llm_handle: DeploymentHandle[Any] | None, metrics: ReportMetrics
) -> LLMClient:
    """按配置选择 LLM 阶段的实现。"""
    if settings.llm_mode is LLMMode.SERVE_LLM:
        if llm_handle is None:
            raise ValueError("llm_mode=serve_llm 需要 LLMServer 的句柄")
        client = ServeLLMClient(llm_handle, settings.engine.model_id, settings.llm, metrics)
        # 定时刷新副本数（仪表 reports_llm_replicas；缩到零时 /readyz 说 cold）
        client.start()
        return client
    return OpenAICompatClient(
        base_url=settings.external_base_url,
        api_key=settings.external.api_key.get_secret_value(),
        model=settings.external.model,
        policy=settings.llm,
    )


def make_job_store(settings: Settings, ledger_handle: DeploymentHandle[Any] | None) -> JobStore:
    """按配置选择账本：设了 jobs.ledger_url 就直连 Postgres，否则经 Ledger 部署（SQLite）。"""
    if settings.jobs.ledger_url is not None:
        return PostgresJobStore(
            settings.jobs.ledger_url.get_secret_value(),
            settings.jobs,
            pool_size=settings.jobs.ledger_pool_size,
        )
    if ledger_handle is None:
        raise ValueError("没有设 jobs.ledger_url 时需要 Ledger 部署的句柄")
    return ledger_client(ledger_handle, settings.jobs)


def make_settler(settings: Settings, store: JobStore, metrics: ReportMetrics) -> Settler | None:
    """SQLite 账本时入口闲着时作业的收尾交给 Ledger 副本（每个作业少两次句柄调用）；Postgres
    账本时没有持有账本的副本，入口就地收尾（None）。"""
    if not isinstance(store, LedgerClient):
        return None
    return LedgerSettlement(store, settings.callback, metrics)


def light_handles(
    settings: Settings,
    renderer: DeploymentHandle[Any],
    callbacks: DeploymentHandle[Any],
    ledger: DeploymentHandle[Any] | None,
) -> tuple[DeploymentHandle[Any], DeploymentHandle[Any], DeploymentHandle[Any] | None]:
    """按 handle_transport 选三个轻量部署句柄的传输（见 handles/transport.py）。"""
    # Postgres 账本时入口直连数据库、不调 Ledger：gRPC 时不为用不到的句柄建路由器
    if ledger is not None and (
        settings.handle_transport is not HandleTransport.GRPC or settings.jobs.ledger_url is None
    ):
        ledger = light_handle(settings, ledger)
    return light_handle(settings, renderer), light_handle(settings, callbacks), ledger


def llm_handle(handle: DeploymentHandle[Any] | None) -> DeploymentHandle[Any] | None:
    """入口 → LLMServer 固定走 Ray actor 调用。

    LLM 副本在 GPU worker 上：actor 调用走节点的固定端口段（RAY_PORT_BASE，防火墙按段放行），
    副本的内部 gRPC 服务却是随机端口；Serve 的吞吐模式默认 gRPC，这里显式改回。
    """
    return by_reference(handle, True) if handle is not None else None


class ReportIngress:
    """入口副本：资源在 __init__ 创建，在关闭时释放。"""

    def __init__(
        self,
        settings: Settings,
        renderer: DeploymentHandle[Any],
        callbacks: DeploymentHandle[Any],
        ledger: DeploymentHandle[Any] | None,
        llm: DeploymentHandle[Any] | None = None,
    ) -> None:
        configure_logging(settings.log_level, settings.log_json_path)
        renderer, callbacks, ledger = light_handles(settings, renderer, callbacks, ledger)
        metrics = replica_metrics()
        self._llm = make_llm_client(settings, llm_handle(llm), metrics)
        self._store = make_job_store(settings, ledger)
        # /readyz：作业要经过的轻量部署各有副本在跑（账本经 Ledger 部署时也算它；Postgres 不经它）
        needed = [renderer, callbacks]
        if isinstance(self._store, LedgerClient) and ledger is not None:
            needed.append(ledger)
        # 本副本在账本里的身份：进程级唯一，副本重启后是新身份（旧租约到期即被接手）
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._services = IngressServices.build(
            settings,
            render=HandleRenderStage(renderer),
            llm=self._llm,
            delivery=HandleDeliveryStage(callbacks),
            store=self._store,
            owner=owner,
            metrics=metrics,
            # trace_id 就是 Serve 的 request_id：代理与各副本的访问日志里都是同一个 id
            trace_ids=serve_request_trace_id,
            settler=make_settler(settings, self._store, metrics),
            stages_down=StagesWithoutReplicas.of(needed),
        )
        # Serve 在事件循环里调用构造函数：此刻启动续租与扫描（接手崩溃前留下的作业）
        self._services.runner.start()
        ledger_kind = "postgres" if settings.jobs.ledger_url else "sqlite（Ledger 部署）"
        logger.info(
            "入口已启动：llm_mode={} 账本={} owner={}", settings.llm_mode, ledger_kind, owner
        )
        if not settings.caller_keys():
            logger.warning("未配置 API key（REPORTS_API_KEYS）：/v1/* 不鉴权，只适合本机或受信网络")

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve 在构造后调用，取得本副本的 HTTP 应用。"""
        return create_app(self._services)

    async def __del__(self) -> None:
        # 优雅关闭：等在途作业（drain_timeout_s），余下的交还租约
        await self._services.runner.drain()
        await self._llm.aclose()
        await self._store.close()


# 部署对象与类分开命名：类按引用序列化（见 deployments/callback.py）
report_ingress_deployment: Deployment = serve.deployment(
    name="ReportIngress",
    ray_actor_options={"num_cpus": 0.1},
    # 作业在 JobRunner 的后台任务里执行，不占请求并发；这里只限同时处理的 HTTP 请求
    max_ongoing_requests=1000,
    # graceful_shutdown_timeout_s 由 compose_app 按 jobs.drain_timeout_s 设（关闭时等在途作业）
)(serve.ingress()(ReportIngress))
