"""集成测试用的假 LLM 部署：与 ReportLLMServer 的 `generate_report`/`check_health` 同接口。

按用户消息里的指令注入故障（真实引擎与 vLLM 协议对象的转换由 e2e 层证明）：
- `[[error:<code>]]`：答 EngineFailure（code ≥ 500 视为可重试）；
- `[[sleep:<秒>]]`：先等待再回答（制造超时、在途作业）；等待中被取消会计数；
- 其余：回显 request_id 与 max_tokens，便于断言 trace_id 跨句柄传递。
不导入 vLLM：假引擎副本（以及整体重启时）几秒内就绪。
"""

from __future__ import annotations

import asyncio
import re
import time

from ray import serve
from ray.serve.deployment import Deployment

from deployments.handles.serve_llm import EngineFailure, EngineReply, EngineRequest
from serve_app.models.reports import Completion, Usage

_ERROR = re.compile(r"\[\[error:(\d+)\]\]")
_SLEEP = re.compile(r"\[\[sleep:([\d.]+)\]\]")


class FakeLLMServer:
    """不加载模型的 LLM 副本替身。"""

    def __init__(self, model_id: str, startup_s: float = 0.0) -> None:
        # 真实引擎的副本要加载模型（CPU 上一分钟量级）：startup_s 模仿它（被杀后补的副本也一样）
        time.sleep(startup_s)
        self._model_id = model_id
        self.calls = 0
        self.cancelled = 0

    async def generate_report(self, request: EngineRequest) -> EngineReply:
        """与 ReportLLMServer.generate_report 同接口。"""
        self.calls += 1
        user = str(request.messages[-1]["content"])
        if match := _SLEEP.search(user):
            try:
                await asyncio.sleep(float(match.group(1)))
            except asyncio.CancelledError:
                # Serve 把调用方的取消传到了副本：真实引擎在此中止请求（vLLM abort）
                self.cancelled += 1
                raise
        if match := _ERROR.search(user):
            return EngineFailure(code=int(match.group(1)), message="注入的引擎错误")
        return Completion(
            content=f"request_id={request.request_id} max_tokens={request.max_tokens}",
            model=self._model_id,
            finish_reason="stop",
            usage=Usage(prompt_tokens=11, completion_tokens=7),
        )

    async def get_calls(self) -> int:
        """被调用次数（测试断言重试次数用）。"""
        return self.calls

    async def get_cancelled(self) -> int:
        """被调用方取消的生成数（证明取消传到了引擎副本）。"""
        return self.cancelled

    async def check_health(self) -> None:
        """总是健康。"""


fake_llm_deployment: Deployment = serve.deployment(
    # 与 serve_config 里 LLMServer 的并发同量级：在途请求都进到副本里（取消可在副本里观察到）
    name="FakeLLMServer",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=32,
)(FakeLLMServer)
