"""沙箱 Jinja2 渲染：输入只作为数据传入模板，绝不当模板执行。"""

from __future__ import annotations

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import JsonValue

from serve_app.core.errors import RenderError
from serve_app.models.reports import ReportLength
from serve_app.models.templates import RenderedPrompt, TemplateSpec
from serve_app.prompting.catalog import TemplateCatalog


class PromptRenderer:
    """把模板 + 输入渲染成 system/user 消息与生成参数。"""

    def __init__(self, catalog: TemplateCatalog) -> None:
        self._catalog = catalog
        self._env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
        )
        # 预编译全部模板；语法错误在启动时暴露
        self._compiled = {
            name: (
                self._env.from_string(spec.system),
                self._env.from_string(spec.user),
            )
            for name, spec in ((n, catalog.get(n)) for n in catalog.names)
        }

    def warm_up(self) -> None:
        """用每个模板的 sample_inputs 试渲染一次；失败即抛出，让部署失败。"""
        for name in self._catalog.names:
            spec = self._catalog.get(name)
            self.render(name, spec.sample_inputs, spec.default_length)

    def render(
        self, report_type: str, inputs: dict[str, JsonValue], length: ReportLength
    ) -> RenderedPrompt:
        """渲染一个报告请求。"""
        spec = self._catalog.get(report_type)
        system_tpl, user_tpl = self._compiled[report_type]
        context = self._context(spec, inputs)
        try:
            system = system_tpl.render(context).strip()
            user = user_tpl.render(context).strip()
        except TemplateError as exc:
            raise RenderError(f"模板 '{report_type}' 渲染失败：{exc}") from exc
        return RenderedPrompt(
            system=system,
            user=user,
            max_tokens=spec.lengths[length].max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
        )

    @staticmethod
    def _context(spec: TemplateSpec, inputs: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """模板上下文：可选输入缺省为空串，必填输入由 StrictUndefined 把关。"""
        context: dict[str, JsonValue] = {s.name: "" for s in spec.inputs if not s.required}
        context.update(inputs)
        return context
