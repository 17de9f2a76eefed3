"""演示：向运行中的服务提交一份示例报告，用 examples/backend_b.py 的接收方收回调并打印。

用法：make demo（服务需已由 make run 启动）。
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
from pathlib import Path
from typing import Any

import httpx

from examples.backend_b import ReceiverThread, create_receiver


def _signing_secret(secret_file: Path) -> str | None:
    """与引擎相同的签名密钥：环境变量优先，其次 make run 写下的文件；都没有则不验签。
    轮换期间引擎配着几把（逗号分隔，新的在前）：接收方只需其中一把，取最新的。"""
    secret = os.environ.get("CALLBACK_SIGNING_SECRET")
    if not secret and secret_file.is_file():
        secret = secret_file.read_text(encoding="utf-8").strip()
    return (secret or "").split(",")[0].strip() or None


def main(argv: list[str] | None = None) -> int:
    """提交示例报告并等待回调。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--report-type", default="sales_weekly")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--secret-file",
        type=Path,
        default=Path(".run/callback_signing_secret"),
        help="回调签名密钥文件（make run 生成）；环境变量 CALLBACK_SIGNING_SECRET 优先",
    )
    args = parser.parse_args(argv)
    out = sys.stdout
    received: queue.Queue[tuple[dict[str, Any], bool]] = queue.Queue()
    app = create_receiver(
        _signing_secret(args.secret_file),
        lambda payload, verified: received.put((payload, verified)),
    )
    with ReceiverThread(app) as receiver, httpx.Client(base_url=args.base_url) as client:
        types = {t["name"]: t for t in client.get("/v1/report-types").raise_for_status().json()}
        if args.report_type not in types:
            out.write(f"未知类型 {args.report_type}，可选：{sorted(types)}\n")
            return 2
        request = {
            "report_type": args.report_type,
            "inputs": types[args.report_type]["example_inputs"],
            "length": "short",
            "callback_url": receiver.url,
            "metadata": {"source": "make demo"},
        }
        out.write("提交请求：\n" + json.dumps(request, ensure_ascii=False, indent=2) + "\n")
        response = client.post("/v1/reports", json=request)
        out.write(f"响应 {response.status_code}：{response.text}\n")
        if response.status_code != 202:
            return 1
        out.write(f"等待回调（最多 {args.timeout:g}s）……\n")
        try:
            payload, verified = received.get(timeout=args.timeout)
        except queue.Empty:
            out.write("超时：没有收到回调\n")
            return 1
        note = "签名已校验" if verified else "未配置签名密钥，未校验"
        out.write(f"收到回调（{note}，webhook-id 去重）：\n")
        out.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
