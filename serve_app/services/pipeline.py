"""报告流水线：渲染 → 生成 → 回调。每个受理的作业恰好产生一次终态回调。"""

from __future__ import annotations

from loguru import logger

from serve_app.core.errors import CallbackError, LLMError, error_info
from serve_app.llm.port import LLMClient
from serve_app.models.reports import CallbackPayload, DeliveryOutcome, ReportJob
from serve_app.services.stages import DeliveryStage, RenderStage


class ReportPipeline:
    """在入口副本的后台任务里执行一个作业。"""

    def __init__(self, renderer: RenderStage, llm: LLMClient, delivery: DeliveryStage) -> None:
        self._renderer = renderer
        self._llm = llm
        self._delivery = delivery

    async def run(self, job: ReportJob) -> DeliveryOutcome:
        """执行作业并投递终态回调；不向外抛异常。"""
        with logger.contextualize(trace_id=job.trace_id):
            payload = await self._produce(job)
            return await self._deliver(job, payload)

    async def _produce(self, job: ReportJob) -> CallbackPayload:
        logger.info("作业开始：report_type={} length={}", job.report_type, job.length)
        try:
            prompt = await self._renderer.render(job)
            completion = await self._llm.generate(prompt, trace_id=job.trace_id)
            if not completion.content.strip():
                raise LLMError("模型返回了空内容")
        except Exception as exc:  # noqa: BLE001 - 任何失败都必须变成 failed 回调
            code, message = error_info(exc)
            logger.exception("作业失败：{} - {}", code, message)
            return CallbackPayload.failed(job, code, message)
        logger.info(
            "生成完成：finish_reason={} prompt_tokens={} completion_tokens={}",
            completion.finish_reason,
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens,
        )
        return CallbackPayload.succeeded(job, completion)

    async def _deliver(self, job: ReportJob, payload: CallbackPayload) -> DeliveryOutcome:
        try:
            outcome = await self._delivery.send(job, payload)
        except Exception as exc:  # noqa: BLE001 - 任何失败都必须变成 failed 回调
            logger.exception("回调部署不可用，回调未送达")
            outcome = DeliveryOutcome(delivered=False, attempts=0, error=repr(exc))
        if not outcome.delivered:
            self._on_undelivered(job, payload, outcome)
        return outcome

    def _on_undelivered(
        self, job: ReportJob, payload: CallbackPayload, outcome: DeliveryOutcome
    ) -> None:
        """重试用尽仍未送达：目前大声记录；持久化重投（后续 issue）从这里接入。"""
        error = CallbackError(f"回调 {job.callback_url} 未送达：{outcome.error}")
        logger.error(
            "【回调丢失】status={} attempts={} last_status={} - {}",
            payload.status,
            outcome.attempts,
            outcome.status_code,
            error.message,
        )
