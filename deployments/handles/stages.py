"""流水线阶段的句柄实现：经 DeploymentHandle 调用 TemplateRenderer / CallbackSender。"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ray.serve.handle import DeploymentHandle

from deployments.handles.ray_errors import handle_retrying
from deployments.handles.request_context import use_trace_id
from serve_app.ledger.call_batcher import Call, CallBatcher, Outcome, SendBatch
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob
from serve_app.models.templates import RenderedPrompt


def _remote_batch(handle: DeploymentHandle[Any], method: str) -> SendBatch:
    """一批调用经句柄的 method（参数是各调用的参数列表，按序返回各自的结果）一次发出；
    副本暂时不可用时整批重试。"""

    async def send(calls: list[Call]) -> list[Outcome]:
        async def attempt() -> list[Outcome]:
            outcomes: list[Outcome] = await getattr(handle, method).remote(
                [args for _, args in calls]
            )
            return outcomes

        return await handle_retrying()(attempt)

    return send


class HandleRenderStage:
    """RenderStage：经句柄调用 TemplateRenderer。

    同一副本里并发的渲染经 CallBatcher 合成一次 render_many（与账本客户端同一个合批器）：
    负载下一批装下几十个作业，每个作业分摊的句柄调用（两边各约 1 ms CPU）少得多；单个作业
    不多等。渲染是纯函数，整批按瞬时错误重试是安全的。批的 Serve request_id 是批里第一个作业的
    trace_id；每个作业自己的渲染日志照样带它自己的 trace_id。"""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self.batcher = CallBatcher(_remote_batch(handle, "render_many"))

    async def render(self, job: ReportJob) -> RenderedPrompt:
        """渲染（副本暂时不可用时整批重试）。"""
        use_trace_id(job.trace_id)
        args = (job.trace_id, job.report_type, job.inputs, job.length, job.output_schema)
        prompt: RenderedPrompt = await self.batcher.call("render", *args)
        return prompt


# 一个接收方（调用方 + 回调地址的 origin）一个合批器；超过这么多个时回收没有在途批次的
_RECEIVER_BATCHERS_PRUNE_AT = 1024
# 回调合批不限在途批次（见 HandleDeliveryStage）
_UNBOUNDED = 1 << 30


def _receiver(job: ReportJob) -> tuple[str, str]:
    """合批的键：同一调用方、同一 origin（scheme://host:port）的回调才合进一批。"""
    parts = urlsplit(job.callback_url)
    return job.caller, f"{parts.scheme}://{parts.netloc}".lower()


class ReceiverBatchers:
    """按接收方分设的合批器：要等投递结果的批只装同一接收方的作业。

    一批要等批里最慢的一次投递才一起返回（送达本身不等：每个回调到了就是到了），按接收方分开，
    一个挂起的 backend B 拖不住别的接收方、别的调用方的投递记账。不限在途批次数（不像账本那样
    攒批）：不为合批多等，单个作业的延迟不变。"""

    def __init__(self, send: SendBatch, *, max_batch: int = 64) -> None:
        self._send = send
        self._max_batch = max_batch
        self._batchers: dict[tuple[str, str], CallBatcher] = {}

    async def call(self, job: ReportJob, method: str, *args: Any) -> Any:
        """把 job 的一次调用排进它的接收方的下一批，等它的结果。"""
        return await self._batcher(_receiver(job)).call(method, *args)

    @property
    def batchers(self) -> dict[tuple[str, str], CallBatcher]:
        """各接收方的合批器（测试与基准读它的统计）。"""
        return self._batchers

    def _batcher(self, key: tuple[str, str]) -> CallBatcher:
        batcher = self._batchers.get(key)
        if batcher is None:
            if len(self._batchers) >= _RECEIVER_BATCHERS_PRUNE_AT:
                self._batchers = {k: b for k, b in self._batchers.items() if not b.idle}
            batcher = CallBatcher(self._send, max_in_flight=_UNBOUNDED, max_batch=self._max_batch)
            self._batchers[key] = batcher
        return batcher


class HandleDeliveryStage:
    """DeliveryStage：经句柄调用 CallbackSender。

    同一副本里同一轮事件循环结束的作业，回调按接收方（ReceiverBatchers）合成一次 send_many
    （负载下账本的一批结果一起回来，它们的回调也就一起走）：每份报告分摊的句柄调用少，副本里
    照样各自并发投递。副本暂时不可用时整批重发：与以前单个重发一样，投到一半的回调可能再送一次
    （同一个 webhook-id，接收方按它去重）。"""

    def __init__(self, handle: DeploymentHandle[Any], *, max_batch: int = 64) -> None:
        self._receivers = ReceiverBatchers(_remote_batch(handle, "send_many"), max_batch=max_batch)

    async def send(self, job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        """投递（副本暂时不可用时整批重试）。"""
        use_trace_id(job.trace_id)
        outcome: DeliveryOutcome = await self._receivers.call(
            job, "send", job.callback_url, payload
        )
        return outcome

    @property
    def batchers(self) -> dict[tuple[str, str], CallBatcher]:
        """各接收方的合批器（测试与基准读它的统计）。"""
        return self._receivers.batchers
