"""流水线各阶段的小接口；基于 DeploymentHandle 的实现在 deployments/handles/stages.py。"""

from __future__ import annotations

from typing import Protocol

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
