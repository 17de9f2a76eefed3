"""TemplateRenderer 部署：加载 templates.yaml，沙箱渲染提示词。"""

from __future__ import annotations

from typing import Any

from loguru import logger
from pydantic import JsonValue
from ray import serve
from ray.serve.deployment import Deployment

from serve_app.core.logging import configure_logging
from serve_app.core.settings import Settings
from serve_app.models.reports import ReportLength
from serve_app.models.templates import RenderedPrompt
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.renderer import PromptRenderer

# render 的参数：(trace_id, report_type, inputs, length, output_schema)
RenderArgs = tuple[str, str, dict[str, JsonValue], ReportLength, dict[str, JsonValue] | None]


class TemplateRenderer:
    """副本启动时加载并试渲染全部模板；模板坏了部署即失败。"""

    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level, settings.log_json_path)
        catalog = TemplateCatalog.from_file(settings.resolved_templates_path)
        self._renderer = PromptRenderer(catalog)
        self._renderer.warm_up()
        logger.info("模板已加载：{}", catalog.names)

    async def render(
        self,
        trace_id: str,
        report_type: str,
        inputs: dict[str, JsonValue],
        length: ReportLength,
        output_schema: dict[str, JsonValue] | None = None,
    ) -> RenderedPrompt:
        """渲染一个作业的提示词（output_schema：请求自带的输出 schema）。"""
        with logger.contextualize(trace_id=trace_id):
            prompt = self._renderer.render(report_type, inputs, length, output_schema)
            logger.info("提示词已渲染：{} 字符，max_tokens={}", len(prompt.user), prompt.max_tokens)
            return prompt

    async def render_many(self, requests: list[RenderArgs]) -> list[tuple[bool, Any]]:
        """一批渲染（入口经 CallBatcher 合并而来）：按顺序返回 (成功, 提示词) 或 (失败, 异常)，
        一个作业的模板错误不影响同批的别的作业。"""
        outcomes: list[tuple[bool, Any]] = []
        for args in requests:
            try:
                outcomes.append((True, await self.render(*args)))
            except Exception as exc:  # noqa: BLE001 - 异常交回给这个作业的调用方
                outcomes.append((False, exc))
        return outcomes

    async def check_health(self) -> None:
        """渲染器是纯内存对象，能响应即健康。"""


# 部署对象与类分开命名：类按引用序列化（见 deployments/callback.py）
template_renderer_deployment: Deployment = serve.deployment(
    name="TemplateRenderer", ray_actor_options={"num_cpus": 0.1}
)(TemplateRenderer)
