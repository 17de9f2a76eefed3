"""HTTP 探针：URL 返回 2xx 则退出码 0，否则 1。

供容器 HEALTHCHECK 与 deploy.sh 使用（镜像里不装 curl）。

用法：python -m cluster.http_probe URL [--bearer-env 环境变量名] [--timeout 秒]
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request


def probe(url: str, token: str | None, timeout_s: float) -> bool:
    """请求一次 URL，2xx 为真。"""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status: int = response.status
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return False
    return 200 <= status < 300


def main(argv: list[str] | None = None) -> int:
    """命令行入口。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--bearer-env", help="从该环境变量读取 Bearer token（不在命令行上暴露）")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    token = os.environ.get(args.bearer_env) if args.bearer_env else None
    return 0 if probe(args.url, token, args.timeout) else 1


if __name__ == "__main__":
    raise SystemExit(main())
