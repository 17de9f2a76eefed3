"""cluster/build_tiny_model.py 的标准输出只有模型路径（local_run.sh 用 `$(…)` 取它）。

回归：tokenizers 的训练进度曾写进标准输出，路径变成 '\\n\\n\\n.cache/tiny-model'，
每个新克隆的第一次 `make run` 都部署失败。
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from serve_app.core.settings import PROJECT_ROOT


def _build(output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "cluster/build_tiny_model.py", str(output)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def test_stdout_is_only_the_absolute_model_path_fresh_and_cached(tmp_path: Path) -> None:
    output = tmp_path / "relative-looking" / "tiny-model"
    fresh = _build(output)
    assert fresh.stdout == f"{output.resolve()}\n"
    assert (output / "config.json").exists()
    cached = _build(output)
    assert cached.stdout == f"{output.resolve()}\n"


def test_a_model_from_an_older_builder_is_rebuilt(tmp_path: Path) -> None:
    """生成方式变了（版本号变了）时旧目录重新生成，而不是沿用旧权重。"""
    output = tmp_path / "tiny-model"
    _build(output)
    marker = output / "tiny-model.json"
    marker.write_text('{"note": "旧版本没有 version 字段"}', encoding="utf-8")
    _build(output)
    assert json.loads(marker.read_text(encoding="utf-8"))["version"] >= 2
