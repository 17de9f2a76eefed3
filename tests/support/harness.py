"""不经 Ray 的入口应用：真实的 FastAPI 应用 + 假的 LLM / 投递阶段（单元层与模糊测试共用）。"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from serve_app.core.metrics import ReportMetrics
from serve_app.core.settings import Settings
from serve_app.http.app import create_app
from serve_app.http.deps import IngressServices
from serve_app.ledger.sqlite_store import SqliteJobStore
from serve_app.ledger.store import JobStore
from serve_app.services.settlement import Settler
from serve_app.services.stages import DeliveryStage
from tests.support.fakes import FakeLLM, LocalRenderStage, RecordingDelivery
from tests.support.sample import load_catalog, make_settings
from tests.support.waiting import wait_until_async

PUBLIC_IP = "93.184.216.34"  # 只作为桩解析的结果，测试从不连接它


async def public_dns(host: str, port: int) -> list[str]:
    """桩解析：任何主机名都“解析”到一个公网地址（不发 DNS，不连接）。"""
    del host, port
    return [PUBLIC_IP]


class Harness:
    """一个入口应用与它的假依赖；回调地址的主机名经桩解析，测试不发 DNS。"""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        metrics: ReportMetrics | None = None,
        settler: Callable[[JobStore, DeliveryStage], Settler] | None = None,
        **overrides: Any,
    ) -> None:
        """settler：由账本与投递阶段造出收尾者（像 SQLite 账本时的 Ledger 副本）；默认就地收尾。"""
        self.settings = settings or make_settings(**overrides)
        self.llm = FakeLLM()
        self.delivery = RecordingDelivery()
        self.render = LocalRenderStage(load_catalog())
        # 内存账本（每个 Harness 一个）；执行器在第一次受理时于当前事件循环里启动
        self.store = SqliteJobStore(Path(":memory:"), self.settings.jobs)
        # 与 Serve 副本同一个工厂（IngressServices.build），只是阶段换成进程内的假实现
        self.services = IngressServices.build(
            self.settings,
            render=self.render,
            llm=self.llm,
            delivery=self.delivery,
            store=self.store,
            owner="unit",
            resolver=public_dns,
            metrics=metrics,
            settler=settler(self.store, self.delivery) if settler is not None else None,
        )
        self.runner = self.services.runner
        self.app = create_app(self.services)

    async def settle(self, timeout_s: float = 5.0) -> None:
        """等本副本的后台作业全部结束。"""

        async def idle() -> bool:
            return self.runner.running == 0

        await wait_until_async(idle, what="后台作业全部结束", timeout_s=timeout_s, interval_s=0.01)

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
