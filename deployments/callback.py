"""CallbackSender 部署：每个副本一个 aiohttp 会话，带重试地回调 backend B。"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger
from ray import serve
from ray.serve.deployment import Deployment

from deployments.metrics import replica_metrics
from serve_app.core.logging import configure_logging
from serve_app.core.settings import Settings
from serve_app.delivery.client import CallbackClient, signing_secrets_file
from serve_app.delivery.url_guard import callback_target_policy
from serve_app.models.reports import CallbackPayload, DeliveryOutcome


class CallbackSender:
    """投递回调；客户端在 __init__ 创建、在副本关闭时释放。"""

    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_json_path)
        self._client = CallbackClient(
            settings.callback,
            callback_target_policy(settings),
            signing_secrets=tuple(s.get_secret_value() for s in settings.callback_signing_secrets),
            metrics=replica_metrics(),
            secrets_file=signing_secrets_file(settings),
        )

    async def send(self, url: str, payload: CallbackPayload) -> DeliveryOutcome:
        """投递一个作业的终态回调。"""
        with logger.contextualize(trace_id=payload.trace_id):
            logger.info("开始回调：status={}", payload.status)
            return await self._client.deliver(url, payload)

    async def send_many(
        self, requests: list[tuple[str, CallbackPayload]]
    ) -> list[tuple[bool, Any]]:
        """一批投递（入口按接收方合并而来）：各自并发投递，按顺序返回 (成功, 结果) 或 (失败, 异常)。

        批的 Serve request_id 是批里第一个作业的 trace_id；每个投递的日志带它自己的 trace_id。"""
        results = await asyncio.gather(
            *(self.send(url, payload) for url, payload in requests), return_exceptions=True
        )
        outcomes: list[tuple[bool, Any]] = []
        for result in results:
            if isinstance(result, Exception):
                outcomes.append((False, result))
            elif isinstance(result, BaseException):
                raise result
            else:
                outcomes.append((True, result))
        return outcomes

    async def __del__(self) -> None:
        await self._client.aclose()


# 部署对象与类分开命名：类可按“模块.类名”引用序列化，不会把 loguru 等全局对象按值打包
callback_sender_deployment: Deployment = serve.deployment(
    name="CallbackSender",
    ray_actor_options={"num_cpus": 0.1},
    # 一次投递可能在重试中等待较久，并发上限按“在途回调”估算
    max_ongoing_requests=256,
)(CallbackSender)
