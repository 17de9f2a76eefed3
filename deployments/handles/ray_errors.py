"""调用 DeploymentHandle 时可重试的 Ray 异常与重试器（各阶段与账本客户端共用一份）。"""

from __future__ import annotations

from loguru import logger
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

# 副本死亡、暂不可用或背压：换个副本或稍后重试可能成功
TRANSIENT_HANDLE_ERRORS: tuple[type[Exception], ...] = (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    BackPressureError,
    DeploymentUnavailableError,
)
# 其中表示“副本死了”的（RayActorError 含 ActorDiedError、ActorUnavailableError）：LLM 副本死了要等
# Serve 补的新副本加载完（serve_app/llm/cold_start.py）
REPLICA_LOST_ERRORS: tuple[type[Exception], ...] = (RayActorError,)


def _log_handle_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning("调用部署失败（第 {} 次）：{!r}，稍后重试", state.attempt_number, exc)


def handle_retrying(
    *,
    also: tuple[type[BaseException], ...] = (),
    initial_backoff_s: float = 0.5,
    max_backoff_s: float = 8.0,
) -> AsyncRetrying:
    """句柄调用的重试器：瞬时 Ray 异常（及 `also`）指数退避重试 5 次，最后一次的异常原样抛出。"""
    return AsyncRetrying(
        stop=stop_after_attempt(5),
        wait=wait_exponential(multiplier=initial_backoff_s, max=max_backoff_s),
        retry=retry_if_exception_type((*TRANSIENT_HANDLE_ERRORS, *also)),
        before_sleep=_log_handle_retry,
        reraise=True,
    )
