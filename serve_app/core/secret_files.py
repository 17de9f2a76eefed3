"""从文件读、改了就重读的密钥列表（API key、回调签名密钥）：轮换不必重启进程。

运维把密钥写进一个文件（compose 的 secret、k8s 的 Secret 卷）；副本每隔 interval_s 最多看一次文件的
修改时间与大小，变了就重读、校验，通过才换上。写坏的文件（校验不过、读不到）不换：继续用上一份，
记一条错误——轮换写错一个字符不该让服务拒掉所有调用方、或发出谁也验不过的签名。
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from loguru import logger


def parse_secret_list(text: str) -> tuple[str, ...]:
    """逗号或换行分隔；去空白、去空项，# 开头的行是注释。"""
    items: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        items.extend(part.strip() for part in line.split(",") if part.strip())
    return tuple(items)


def read_secret_file(path: Path) -> tuple[str, ...]:
    """读一次（启动时同步读；运行中经 ReloadingSecrets 在线程里读）。"""
    return parse_secret_list(path.read_text(encoding="utf-8"))


class ReloadingSecrets:
    """一个密钥文件的当前内容；`current()` 在事件循环里调用，文件 I/O 放进线程。"""

    def __init__(
        self,
        path: Path,
        check: Callable[[tuple[str, ...]], None],
        *,
        interval_s: float = 2.0,
        what: str = "密钥文件",
    ) -> None:
        self._path = path
        self._check = check
        self._interval_s = interval_s
        self._what = what
        self._values = read_secret_file(path)
        check(self._values)
        self._stamp = self._file_stamp()
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    def _file_stamp(self) -> tuple[int, int]:
        stat = os.stat(self._path)
        return stat.st_mtime_ns, stat.st_size

    def _reload(self) -> tuple[str, ...] | None:
        """文件变了就读一遍；没变返回 None。在线程里运行。"""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return None
        values = read_secret_file(self._path)
        self._check(values)
        self._stamp = stamp
        return values

    async def current(self) -> tuple[str, ...]:
        """当前的密钥；距上次检查超过 interval_s 才看一眼文件。"""
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked_at < self._interval_s:
            return self._values
        async with self._lock:
            if loop.time() - self._checked_at < self._interval_s:
                return self._values
            self._checked_at = loop.time()
            try:
                values = await asyncio.to_thread(self._reload)
            except (OSError, ValueError) as exc:
                # 不把文件内容写进日志：ValueError 的消息只说第几项不对
                logger.error("{} {} 读不了或不合格，继续用上一份：{}", self._what, self._path, exc)
                return self._values
            if values is not None:
                self._values = values
                logger.info("{} {} 已重新载入（{} 项）", self._what, self._path, len(values))
        return self._values
