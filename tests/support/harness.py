"""不经 Ray 的入口应用：真实的 FastAPI 应用 + 假的 LLM / 投递阶段（单元层与模糊测试共用）。"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from serve_app.api import create_app
from serve_app.core.services import IngressServices
from serve_app.core.settings import Settings
from serve_app.delivery.url_guard import callback_target_policy
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.services.jobs import JobService
from serve_app.services.pipeline import ReportPipeline
from serve_app.services.runner import JobRunner
from serve_app.services.submission import ReportSubmissions
from tests.support.fakes import FakeLLM, LocalRenderStage, RecordingDelivery
from tests.support.sample import load_catalog, make_settings

PUBLIC_IP = "93.184.216.34"  # 只作为桩解析的结果，测试从不连接它


async def public_dns(host: str, port: int) -> list[str]:
    """桩解析：任何主机名都“解析”到一个公网地址（不发 DNS，不连接）。"""
    del host, port
    return [PUBLIC_IP]


class Harness:
    """一个入口应用与它的假依赖；回调地址的主机名经桩解析，测试不发 DNS。"""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or make_settings(**overrides)
        catalog = load_catalog()
        self.llm = FakeLLM()
        self.delivery = RecordingDelivery()
        # 内存账本（每个 Harness 一个）；执行器在第一次受理时于当前事件循环里启动
        self.store = SqliteJobStore(Path(":memory:"), self.settings.jobs)
        pipeline = ReportPipeline(LocalRenderStage(catalog), self.llm, self.delivery)
        self.runner = JobRunner(self.store, pipeline, self.settings.jobs, owner="unit")
        self.services = IngressServices(
            settings=self.settings,
            catalog=catalog,
            submissions=ReportSubmissions(
                catalog, self.settings, callback_target_policy(self.settings, resolver=public_dns)
            ),
            jobs=JobService(self.store, self.runner),
            llm=self.llm,
        )
        self.app = create_app(self.services)

    async def settle(self, timeout_s: float = 5.0) -> None:
        """等本副本的后台作业全部结束。"""
        async with asyncio.timeout(timeout_s):
            while self.runner.running:
                await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        """排空执行器并关闭账本。"""
        await self.runner.drain(timeout_s=0.5)
        await self.store.close()

    def client(self) -> httpx.AsyncClient:
        """经 ASGI 直接调用应用的客户端（不走网络）。"""
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[httpx.AsyncClient]:
        """client() 的上下文：退出时关闭客户端、排空执行器并关闭账本（线程不留给下一个测试）。"""
        try:
            async with self.client() as client:
                yield client
        finally:
            await self.aclose()
