"""装 Debian 包：本机没有某个服务器程序时，以 root 用 apt-get 安装；装不上就明确失败。

本地 Prometheus（make metrics）与测试用的真实 Postgres 都经它安装（CI 以 root 跑在新机器上）。
"""

from __future__ import annotations

import os
import shutil
import subprocess


class PackageMissing(RuntimeError):
    """需要的 Debian 包没有装、也装不上。"""


def install(package: str, why: str) -> None:
    """以 root 用 apt-get 安装 `package`；不是 root 或没有 apt-get 时说明怎么手动装。"""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PackageMissing(
            f"{why}：请先安装 Debian 的 {package} 包（sudo apt-get install -y {package}），"
            "或以 root 运行让它自行安装"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            joined = " ".join(command)
            detail = result.stderr.strip()[-2000:]
            raise PackageMissing(f"安装 {package} 失败（{joined}）：{detail}")
