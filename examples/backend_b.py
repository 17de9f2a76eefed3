"""backend B 的回调接收方示例（可直接复制改写）。

要点：
- 配了签名密钥（与引擎的 CALLBACK_SIGNING_SECRET 相同）时，用 `standardwebhooks` 校验
  `webhook-id` / `webhook-timestamp` / `webhook-signature`，不通过答 401；
- 同一个 `webhook-id` 只处理一次（引擎在重试、重投时都带同一个 id），重放直接 200；
- 立即答 2xx，耗时的处理放到响应之后（BackgroundTasks），免得引擎等到超时再重投。

单独运行：`python -m examples.backend_b --port 9000`（密钥取环境变量 CALLBACK_SIGNING_SECRET）。
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# 收到并校验通过的回调交给它处理（在响应之后运行）
Handler = Callable[[dict[str, Any], bool], None]


def create_receiver(signing_secret: str | None, handle: Handler) -> FastAPI:
    """回调接收应用：`handle(载荷, 签名是否已校验)` 在 2xx 发出之后调用，每个 webhook-id 一次。"""
    verifier = Webhook(signing_secret) if signing_secret else None
    seen: set[str] = set()
    app = FastAPI(title="backend B 回调接收方")

    @app.post("/hooks/reports")
    async def receive(request: Request, background: BackgroundTasks) -> JSONResponse:
        raw = await request.body()
        headers = dict(request.headers)
        if verifier is not None:
            try:
                payload: dict[str, Any] = verifier.verify(raw, headers)
            except WebhookVerificationError as exc:
                return JSONResponse({"error": f"签名校验失败：{exc}"}, status_code=401)
        else:
            payload = json.loads(raw)
        message_id = headers.get("webhook-id", payload.get("trace_id", ""))
        if message_id in seen:
            return JSONResponse({"ok": True, "duplicate": True})
        seen.add(message_id)
        background.add_task(handle, payload, verifier is not None)
        return JSONResponse({"ok": True})

    return app


class ReceiverThread:
    """在后台线程里运行接收方（演示用）；`url` 为回调地址，作上下文管理器保证关闭。"""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}/hooks/reports"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])), daemon=True
        )

    def __enter__(self) -> ReceiverThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("回调接收方未能启动")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def main(argv: list[str] | None = None) -> int:
    """命令行入口：在前台运行接收方，把收到的报告写到标准输出。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)

    def show(payload: dict[str, Any], verified: bool) -> None:
        line = json.dumps({"verified": verified, **payload}, ensure_ascii=False)
        os.write(1, (line + "\n").encode())

    app = create_receiver(os.environ.get("CALLBACK_SIGNING_SECRET") or None, show)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
