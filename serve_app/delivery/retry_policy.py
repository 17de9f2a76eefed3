"""回调重试策略：把 `CallbackPolicy` 变成 tenacity 的等待/停止/重试条件。

遵循 Standard Webhooks 惯例：只有 2xx 算成功；3xx 算失败且不跟随；
网络错误、超时、429 与 5xx 重试（尊重 Retry-After）；其余 4xx（含 410）不重试。
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from loguru import logger
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from serve_app.core.settings import CallbackPolicy


class NoResponse(Exception):
    """这次尝试没有得到 HTTP 响应（连接失败、超时、对端中途断开、协议错误）：稍后重试。"""


class RetryableStatus(Exception):
    """接收方返回 429 或 5xx：稍后重试。"""

    def __init__(self, status_code: int, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class PermanentStatus(Exception):
    """接收方返回不应重试的状态（3xx、410、其余 4xx）。"""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def is_retryable_status(status_code: int) -> bool:
    """429 与 5xx 可重试。"""
    return status_code == 429 or status_code >= 500


def parse_retry_after(value: str | None) -> float | None:
    """解析 Retry-After（秒数或 HTTP 日期）；无法解析返回 None。"""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class CallbackRetrying:
    """按 `CallbackPolicy` 构造的 tenacity 重试器工厂。"""

    retryable_exceptions = (NoResponse, RetryableStatus)

    def __init__(self, policy: CallbackPolicy) -> None:
        self._policy = policy
        self._backoff = wait_exponential(
            multiplier=policy.initial_backoff_s, max=policy.max_backoff_s
        ) + wait_random(0, policy.jitter_s)

    def wait(self, state: RetryCallState) -> float:
        """指数退避加抖动；接收方给了 Retry-After 时至少等那么久（有上限）。"""
        delay = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        if (
            self._policy.honour_retry_after
            and isinstance(exc, RetryableStatus)
            and exc.retry_after_s is not None
        ):
            delay = max(delay, min(exc.retry_after_s, self._policy.max_retry_after_s))
        return delay

    @staticmethod
    def _before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "回调第 {} 次失败（{!r}），{:.2f}s 后重试",
            state.attempt_number,
            exc,
            state.next_action.sleep if state.next_action else 0.0,
        )

    def retrying(self) -> AsyncRetrying:
        """新的重试器（每次投递一个）。"""
        return AsyncRetrying(
            stop=stop_after_attempt(self._policy.max_attempts),
            wait=self.wait,
            retry=retry_if_exception_type(self.retryable_exceptions),
            before_sleep=self._before_sleep,
            reraise=True,
        )
