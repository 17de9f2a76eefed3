"""测试里唯一的等待工具：轮询到条件成立并返回它给出的值；超时抛 TimeoutError（说明在等什么）。"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)
from tenacity.retry import retry_base


def _timed_out(what: str, timeout_s: float) -> Callable[[RetryCallState], None]:
    def give_up(state: RetryCallState) -> None:
        outcome = state.outcome
        last = outcome.exception() if outcome and outcome.failed else (outcome and outcome.result())
        raise TimeoutError(f"{timeout_s:g}s 内等不到{what}（最后一次：{last!r}）")

    return give_up


def _retry(ignore: tuple[type[BaseException], ...]) -> retry_base:
    # 值为假（None、False、空）继续等；ignore 里的异常（如服务重启时的连接错误）也继续等
    return retry_if_result(lambda value: not value) | retry_if_exception_type(ignore)


def wait_until[T](
    check: Callable[[], T | None],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """同步轮询 check()，直到它返回真值（并返回该值）。"""
    retrying = Retrying(
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(interval_s),
        retry=_retry(ignore),
        retry_error_callback=_timed_out(what, timeout_s),
    )
    result = retrying(check)
    assert result is not None  # 假值会继续等，走到这里一定是真值
    return result


async def wait_until_async[T](
    check: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """异步轮询 await check()，直到它返回真值（并返回该值）。"""
    retrying = AsyncRetrying(
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(interval_s),
        retry=_retry(ignore),
        retry_error_callback=_timed_out(what, timeout_s),
    )

    async def call() -> T | None:
        # 返回协程的 lambda 也要真的 await：tenacity 只按“是不是协程函数”判断
        value = check()
        return await value if inspect.isawaitable(value) else value

    result: T | None = await retrying(call)
    assert result is not None  # 假值会继续等，走到这里一定是真值
    return result
