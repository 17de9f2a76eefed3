"""同一设置的两处来源：serve_config 的 args 与环境变量（含 .env）给了不同的值时，列出冲突。

每个设置只应在一处给出；args 静默覆盖环境变量会让运维以为改了其实没改（如模型名）。
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import AliasChoices, BaseModel, TypeAdapter, ValidationError


def environment(dotenv_path: Path) -> dict[str, str]:
    """进程环境与 .env 文件合并（进程环境优先）；键统一大写，空值视为未设置。"""
    merged: dict[str, str] = {}
    if dotenv_path.is_file():
        merged |= {k.upper(): v for k, v in dotenv_values(dotenv_path).items() if v}
    merged |= {k.upper(): v for k, v in os.environ.items() if v}
    return merged


def _env_names(name: str, alias: object, prefix: str) -> list[str]:
    """读这个字段的环境变量名：有别名时只读别名（不加前缀），否则前缀加字段名。"""
    if isinstance(alias, AliasChoices):
        return sorted({c.upper() for c in alias.choices if isinstance(c, str)})
    return [f"{prefix}{name}".upper()]


def _parse(adapter: TypeAdapter[Any], raw: str) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError:
        return adapter.validate_python(json.loads(raw))


def find_conflicts(
    model: type[BaseModel],
    args: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    prefix: str = "REPORTS_",
    path: str = "",
) -> list[str]:
    """args 里的每个叶子设置，若环境变量也给了且值不同，返回一条说明（指出两处与两个值）。"""
    conflicts: list[str] = []
    for name, value in args.items():
        field = model.model_fields.get(name)
        if field is None:
            continue  # 未知字段由调用方报错
        nested = field.annotation
        dotted = f"{path}{name}"
        if nested is None:
            continue
        if (
            isinstance(value, Mapping)
            and isinstance(nested, type)
            and issubclass(nested, BaseModel)
        ):
            conflicts += find_conflicts(
                nested, value, env, prefix=f"{prefix}{name}__".upper(), path=f"{dotted}."
            )
            continue
        adapter: TypeAdapter[Any] = TypeAdapter(nested)
        for env_name in _env_names(name, field.validation_alias, prefix):
            raw = env.get(env_name)
            if raw is None:
                continue
            try:
                same = _parse(adapter, raw) == adapter.validate_python(value)
            except (ValidationError, ValueError):
                same = False
            if not same:
                conflicts.append(
                    f"{dotted}：serve_config 的 args 里是 {value!r}，环境变量 {env_name}={raw!r}"
                )
    return conflicts
