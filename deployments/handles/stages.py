"""流水线阶段的句柄实现：经 DeploymentHandle 调用 TemplateRenderer / CallbackSender。"""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.handles.ray_errors import handle_retrying
from deployments.handles.request_context import use_trace_id
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob
from serve_app.models.templates import RenderedPrompt


class HandleRenderStage:
    """RenderStage：经句柄调用 TemplateRenderer。"""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def render(self, job: ReportJob) -> RenderedPrompt:
        """渲染（副本暂时不可用时重试）。"""
        use_trace_id(job.trace_id)

        async def attempt() -> RenderedPrompt:
            prompt: RenderedPrompt = await self._handle.render.remote(
                job.trace_id, job.report_type, job.inputs, job.length, job.output_schema
            )
            return prompt

        return await handle_retrying()(attempt)


class HandleDeliveryStage:
    """DeliveryStage：经句柄调用 CallbackSender。"""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def send(self, job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        """投递（副本暂时不可用时重试）。"""
        use_trace_id(job.trace_id)

        async def attempt() -> DeliveryOutcome:
            outcome: DeliveryOutcome = await self._handle.send.remote(job.callback_url, payload)
            return outcome

        return await handle_retrying()(attempt)
