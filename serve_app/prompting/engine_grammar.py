"""引擎编译得了这个 JSON Schema 吗：用 vLLM 默认的结构化输出后端 xgrammar 试编译一遍。

jsonschema 的 check_schema 只管 schema 合不合规范；引擎的文法编译器另有不支持的写法
（正则里的后行断言、找不到的 $ref、minItems 大于 maxItems……）。内置类型的 schema 在渲染部署
启动时试编译，编译不了部署就失败；请求自带的在渲染时试编译，编译不了作业以 render_error 结束，
消息里是编译器的原话——不等引擎在生成时才拒绝。比 vLLM 的 auto 后端保守：xgrammar 不支持、
guidance 能退而支持的写法我们也拒绝，换来的是每个被受理的 schema 都走同一个后端。
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from pydantic import JsonValue

# 编译器消息前的“[时间] 源文件:行号:”对用户没用
_LOCATION = re.compile(r"^\[[^\]]*\]\s+\S+:\d+:\s*")


@lru_cache(maxsize=512)
def _compile_error(schema_json: str) -> str | None:
    # 惰性导入：xgrammar 会带进 torch（约 4 秒），只有真遇到 JSON 报告才值得
    import xgrammar

    try:
        xgrammar.Grammar.from_json_schema(schema_json, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - 编译器的异常类型不公开，消息原样交给调用方
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        return _LOCATION.sub("", lines[-1])
    return None


def engine_compile_error(schema: dict[str, JsonValue]) -> str | None:
    """编译不了时返回编译器的原因，可以时为 None；相同的 schema 只编译一次。"""
    return _compile_error(json.dumps(schema, sort_keys=True, ensure_ascii=False))
