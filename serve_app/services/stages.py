"""流水线各阶段的小接口，以及基于 DeploymentHandle 的实现。"""

from __future__ import annotations

from typing import Any, Protocol

from ray.serve.handle import DeploymentHandle

from serve_app.core.ray_errors import handle_retrying
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob
from serve_app.models.templates import RenderedPrompt


class RenderStage(Protocol):
    """把作业渲染成提示词。"""

    async def render(self, job: ReportJob) -> RenderedPrompt:
        """渲染。"""
        ...


class DeliveryStage(Protocol):
    """投递终态回调。"""

    async def send(self, job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        """投递。"""
        ...


class HandleRenderStage:
    """经句柄调用 TemplateRenderer。"""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def render(self, job: ReportJob) -> RenderedPrompt:
        """渲染（副本暂时不可用时重试）。"""
        async for attempt in handle_retrying():
            with attempt:
                result: RenderedPrompt = await self._handle.render.remote(
                    job.trace_id, job.report_type, job.inputs, job.length
                )
                return result
        raise AssertionError("unreachable")  # pragma: no cover


class HandleDeliveryStage:
    """经句柄调用 CallbackSender。"""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def send(self, job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        """投递（副本暂时不可用时重试）。"""
        async for attempt in handle_retrying():
            with attempt:
                result: DeliveryOutcome = await self._handle.send.remote(job.callback_url, payload)
                return result
        raise AssertionError("unreachable")  # pragma: no cover
