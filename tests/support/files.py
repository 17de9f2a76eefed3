"""测试里改运维文件的办法：像运维那样原子地换（写临时文件再改名），读的一方不会读到半个文件。"""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, text: str) -> None:
    """把 path 原子地换成 text。"""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
