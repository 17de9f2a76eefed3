"""报告的输出格式：markdown（默认）或 json（带 JSON Schema）。模板与请求共用同一个形状。

schema 在载入目录（模板）或受理请求时就检查：大小、嵌套层数有上限，Draft 2020-12 的
check_schema 通过才算数——坏的 schema 让部署失败或答 422，而不是等到第一个作业才出错。
"""

from __future__ import annotations

import json
from typing import Literal

from jsonschema import Draft202012Validator, SchemaError
from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

OutputFormat = Literal["markdown", "json"]

# schema 的大小与嵌套上限：它会进提示词（占 token）并被引擎编译成文法
MAX_SCHEMA_BYTES = 16 * 1024
MAX_SCHEMA_NESTING = 32


def nesting_depth(value: JsonValue, limit: int) -> int:
    """JSON 值的嵌套层数（标量 0，[] / {} 1），超过 limit 即停；用显式栈，不怕深度本身。"""
    deepest = 0
    stack: list[tuple[JsonValue, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: list[JsonValue]
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > limit:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_schema(schema: dict[str, JsonValue], name: str) -> None:
    """schema 不能用时抛 ValueError，消息指名是哪个 schema、哪里、为什么。"""
    size = len(json.dumps(schema, ensure_ascii=False).encode())
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"{name} 过大：{size} 字节，上限 {MAX_SCHEMA_BYTES}")
    if nesting_depth(schema, MAX_SCHEMA_NESTING) > MAX_SCHEMA_NESTING:
        raise ValueError(f"{name} 嵌套超过 {MAX_SCHEMA_NESTING} 层")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "（根）"
        raise ValueError(
            f"{name} 不是合法的 JSON Schema（Draft 2020-12）：在 {where}：{exc.message}"
        ) from exc


class OutputSpec(BaseModel):
    """一个报告的输出格式（templates.yaml 的 `output`，`GET /v1/report-types` 原样给出）。"""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    format: OutputFormat = "markdown"
    schema_: dict[str, JsonValue] | None = Field(
        None, alias="schema", description="format 为 json 时必填：报告要符合的 JSON Schema"
    )
    required_sections: tuple[str, ...] = Field(
        (), description="format 为 markdown 时可选：报告里必须出现的标题"
    )

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if self.format == "json":
            if self.schema_ is None:
                raise ValueError("output.format 为 json 时必须给出 output.schema")
            if self.required_sections:
                raise ValueError("required_sections 只用于 markdown 报告")
            check_schema(self.schema_, "output.schema")
        elif self.schema_ is not None:
            raise ValueError("output.schema 只用于 format: json")
        return self

    @classmethod
    def json_schema_output(cls, schema: dict[str, JsonValue]) -> OutputSpec:
        """请求自带的 output_schema：把这份报告改成 JSON 输出。"""
        return cls.model_validate({"format": "json", "schema": schema})

    def response_format(self) -> dict[str, JsonValue] | None:
        """OpenAI 的 response_format（json_schema，strict）；markdown 为 None。两种引擎模式都发。"""
        if self.schema_ is None:
            return None
        return {
            "type": "json_schema",
            "json_schema": {"name": "report", "schema": self.schema_, "strict": True},
        }
