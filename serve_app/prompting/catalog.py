"""模板目录：从 YAML 加载一次，校验请求的类型与输入，提供类型清单。"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import JsonValue, ValidationError

from serve_app.core.errors import RequestError
from serve_app.models.reports import ReportLength
from serve_app.models.templates import ReportTypeInfo, TemplateFile, TemplateSpec


class TemplateCatalog:
    """只读的报告类型目录。"""

    def __init__(self, templates: tuple[TemplateSpec, ...]) -> None:
        self._by_name = {t.name: t for t in templates}

    @classmethod
    def from_file(cls, path: Path) -> TemplateCatalog:
        """读取并严格校验 templates.yaml；有错直接抛出（部署随之失败）。"""
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"无法读取模板文件 {path}: {exc}") from exc
        try:
            parsed = TemplateFile.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"模板文件 {path} 不合法: {exc}") from exc
        return cls(parsed.templates)

    @property
    def names(self) -> list[str]:
        """全部报告类型名（排序）。"""
        return sorted(self._by_name)

    def get(self, report_type: str) -> TemplateSpec:
        """按名取模板；未知类型给出可选列表。"""
        spec = self._by_name.get(report_type)
        if spec is None:
            raise RequestError(f"未知的 report_type '{report_type}'，可选：{', '.join(self.names)}")
        return spec

    def validate_request(
        self,
        report_type: str,
        inputs: dict[str, JsonValue],
        length: ReportLength | None,
    ) -> tuple[TemplateSpec, ReportLength]:
        """校验类型、输入与篇幅；返回模板与最终篇幅。错误信息说明如何修正。"""
        spec = self.get(report_type)
        known = {s.name: s for s in spec.inputs}
        missing = [n for n in spec.required_inputs if inputs.get(n) in (None, "")]
        extra = sorted(set(inputs) - set(known))
        problems: list[str] = []
        if missing:
            problems.append(f"缺少必填输入 {missing}")
        if extra:
            problems.append(f"未知输入 {extra}（'{report_type}' 接受 {sorted(known)}）")
        for name, value in inputs.items():
            input_spec = known.get(name)
            if input_spec is None or value is None:
                continue
            size = len(value) if isinstance(value, str) else len(json.dumps(value))
            if size > input_spec.max_chars:
                problems.append(f"输入 '{name}' 过长：{size} 字符，上限 {input_spec.max_chars}")
        if problems:
            raise RequestError(f"report_type '{report_type}' 的输入有误：" + "；".join(problems))
        return spec, length or spec.default_length

    def describe(self) -> list[ReportTypeInfo]:
        """`GET /v1/report-types` 的内容。"""
        return [
            ReportTypeInfo(
                name=t.name,
                title=t.title,
                description=t.description,
                inputs=t.required_inputs,
                optional_inputs=[s.name for s in t.inputs if not s.required],
                lengths=t.lengths,
                default_length=t.default_length,
                temperature=t.temperature,
                example_inputs=t.sample_inputs,
                output=t.output,
            )
            for t in (self._by_name[n] for n in self.names)
        ]
