"""流水线阶段的句柄实现：经 DeploymentHandle 调用 TemplateRenderer / CallbackSender。"""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.handles.ray_errors import handle_retrying
from deployments.handles.request_context import use_trace_id
from serve_app.ledger.call_batcher import Call, CallBatcher, Outcome
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob
from serve_app.models.templates import RenderedPrompt


class HandleRenderStage:
    """RenderStage：经句柄调用 TemplateRenderer。

    同一副本里并发的渲染经 CallBatcher 合成一次 render_many（与账本客户端同一个合批器）：
    负载下一批装下几十个作业，每个作业分摊的句柄调用（两边各约 1 ms CPU）少得多；单个作业
    不多等。渲染是纯函数，整批按瞬时错误重试是安全的。批的 Serve request_id 是批里第一个作业的
    trace_id；每个作业自己的渲染日志照样带它自己的 trace_id。"""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle
        self.batcher = CallBatcher(self._render_many)

    async def render(self, job: ReportJob) -> RenderedPrompt:
        """渲染（副本暂时不可用时整批重试）。"""
        use_trace_id(job.trace_id)
        args = (job.trace_id, job.report_type, job.inputs, job.length, job.output_schema)
        prompt: RenderedPrompt = await self.batcher.call("render", *args)
        return prompt

    async def _render_many(self, calls: list[Call]) -> list[Outcome]:
        async def attempt() -> list[Outcome]:
            outcomes: list[Outcome] = await self._handle.render_many.remote(
                [args for _, args in calls]
            )
            return outcomes

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
