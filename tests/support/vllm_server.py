"""独立的 vLLM OpenAI 服务（CPU，127.0.0.1）：e2e 外部模式的对端与基准的对照组。

经自己的 PID / 进程组启动与关闭。
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.local_http import free_port, wait_http_ok


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server`，只监听 127.0.0.1。"""

    def __init__(
        self,
        model_dir: Path,
        served_name: str,
        log_path: Path,
        max_model_len: int = 2048,
        log_requests: bool = False,
        niceness: int = 0,
    ) -> None:
        self.port = free_port()
        self._max_model_len = max_model_len
        self._log_requests = log_requests
        self._niceness = niceness
        self.served_name = served_name
        self._model_dir = model_dir
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """API 服务进程的 PID（引擎核心与 worker 是它的子进程）。"""
        assert self._process is not None, "服务还没有启动"
        return self._process.pid

    @property
    def base_url(self) -> str:
        """OpenAI 兼容的 base URL。"""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """后台启动（不等待就绪）；新会话，便于整组关闭它派生的引擎进程。"""
        # 空闲连接保持 60 秒（vLLM 默认 5 秒）：vllm bench serve 热身之后要准备一会儿数据，
        # 再用热身时的连接发请求，服务端恰好在这时关掉空闲连接，那个请求就以
        # ServerDisconnectedError 失败
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "60"}
        # nice 直接 exec 目标程序：PID 不变，引擎子进程继承同一优先级
        command = [
            "nice",
            "-n",
            str(self._niceness),
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self._model_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enforce-eager",
            "--max-model-len",
            str(self._max_model_len),
            "--gpu-memory-utilization",
            "0.15",
        ]
        if self._log_requests:
            # 每个请求的收到 / 中止写进日志（测试据此确认中止已发给引擎）
            command.append("--enable-log-requests")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self, timeout_s: float) -> None:
        """等 /v1/models 可用；进程提前退出时报出日志位置。"""
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"vLLM 服务已退出，见 {self.log_path}")
        wait_http_ok(self.base_url + "/models", timeout_s)

    def stop(self) -> None:
        """向自己的进程组发 SIGTERM，超时再 SIGKILL。"""
        if self._process is None or self._process.poll() is not None:
            return
        pgid = os.getpgid(self._process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self._process.wait(timeout=10)
