"""小规模跑一个基准脚本（python -m benchmarks.<名字>）：测试只看它跑通、写出了结果文件。"""

from __future__ import annotations

import subprocess
import sys

from serve_app.core.settings import PROJECT_ROOT


def run_benchmark(module: str, *args: str, timeout_s: float = 300) -> str:
    """在仓库根目录运行 benchmarks.<module>，退出码非 0 时带着 stderr 失败；返回 stdout。"""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
