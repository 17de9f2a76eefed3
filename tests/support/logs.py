"""捕获 loguru 日志的小工具。"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loguru import logger


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """在 with 块内把 loguru 记录收集成字典列表（level、message、trace_id、exception）。"""
    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        records.append(
            {
                "level": record["level"].name,
                "message": record["message"],
                "trace_id": record["extra"].get("trace_id"),
                "exception": record["exception"],
                "name": record["name"],
            }
        )

    handler_id = logger.add(sink, level="DEBUG")
    try:
        yield records
    finally:
        logger.remove(handler_id)
