"""沙箱 Jinja2 渲染：输入只作为数据传入模板，绝不当模板执行。"""

from __future__ import annotations

import json

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import JsonValue

from serve_app.core.errors import RenderError
from serve_app.models.output import OutputSpec
from serve_app.models.reports import ReportLength
from serve_app.models.templates import RenderedPrompt, TemplateSpec
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.engine_grammar import engine_compile_error


def _output_instruction(output: OutputSpec) -> str:
    """让模型看到输出要求：引擎按 schema 约束解码，真实模型看到 schema 也写得更好。"""
    if output.schema_ is not None:
        schema = json.dumps(output.schema_, ensure_ascii=False, separators=(",", ":"))
        return (
            "\n\n只输出一个 JSON 对象，不要输出任何其他文字或 Markdown 代码块。"
            f"它必须符合这个 JSON Schema：\n{schema}"
        )
    if output.required_sections:
        headings = "、".join(f"「{h}」" for h in output.required_sections)
        return f"\n\n报告必须包含这些 Markdown 标题（原样写出）：{headings}。"
    return ""


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
        """用每个模板的 sample_inputs 试渲染一次、让引擎的文法编译器编译一次它的 schema；
        失败即抛出，让部署失败。"""
        for name in self._catalog.names:
            spec = self._catalog.get(name)
            if spec.output.schema_ is not None:
                error = engine_compile_error(spec.output.schema_)
                if error is not None:
                    raise RenderError(f"模板 '{name}' 的 output.schema 引擎编译不了：{error}")
            self.render(name, spec.sample_inputs, spec.default_length)

    def render(
        self,
        report_type: str,
        inputs: dict[str, JsonValue],
        length: ReportLength,
        output_schema: dict[str, JsonValue] | None = None,
    ) -> RenderedPrompt:
        """渲染一个报告请求；output_schema（请求自带）优先于类型声明的输出格式。"""
        spec = self._catalog.get(report_type)
        output = spec.output
        if output_schema is not None:
            error = engine_compile_error(output_schema)
            if error is not None:
                raise RenderError(f"请求的 output_schema 引擎编译不了：{error}")
            output = OutputSpec.json_schema_output(output_schema)
        system_tpl, user_tpl = self._compiled[report_type]
        context = self._context(spec, inputs)
        try:
            system = system_tpl.render(context).strip()
            user = user_tpl.render(context).strip()
        except TemplateError as exc:
            raise RenderError(f"模板 '{report_type}' 渲染失败：{exc}") from exc
        return RenderedPrompt(
            system=system + _output_instruction(output),
            user=user,
            max_tokens=spec.lengths[length].max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            output=output,
        )

    @staticmethod
    def _context(spec: TemplateSpec, inputs: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """模板上下文：可选输入缺省为空串，必填输入由 StrictUndefined 把关。"""
        context: dict[str, JsonValue] = {s.name: "" for s in spec.inputs if not s.required}
        context.update(inputs)
        return context
