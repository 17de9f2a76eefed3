"""Ray 私有 API（deployments/ray_private.py 与 ray_private_llm.py）逐个真实调用，不启动 Ray。

Ray 升级后哪个私有 API 改名或改了语义，这里失败，失败信息指名是哪一个；句柄的路由器换成
桩（真的路由器要连 Serve 控制器），被测的 _init / options 本身是 Ray 的真实代码。
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig

from deployments import ray_private, ray_private_llm


@contextmanager
def naming(api: str) -> Iterator[None]:
    """把失败改写成指名 API 的一句话。"""
    try:
        yield
    except Exception as exc:
        raise AssertionError(f"Ray 私有 API 变了：{api}（见 deployments/ray_private.py）") from exc


def _unrouted_handle() -> DeploymentHandle[Any]:
    handle: DeploymentHandle[Any] = DeploymentHandle("Stage", "reports")
    stub: Callable[..., str] = lambda **_: "router"  # noqa: E731 - 桩：不连控制器
    handle._create_router = stub  # type: ignore[assignment]
    return handle


def test_request_context_set_and_get() -> None:
    async def in_a_task() -> str:
        ray_private.set_request_id("trace-1")
        return ray_private.current_request_id()

    with naming("ray.serve.context._set_request_context / _get_serve_request_context"):
        assert asyncio.run(in_a_task()) == "trace-1"


def test_handle_options_by_reference() -> None:
    with naming("DeploymentHandle.options(_by_reference=...)"):
        for enabled in (True, False):
            handle = ray_private.by_reference(_unrouted_handle(), enabled)
            assert getattr(handle.handle_options, "_by_reference") is enabled  # noqa: B009


def test_handle_init_router_in_this_loop() -> None:
    with naming("DeploymentHandle._init(_run_router_in_separate_loop=False)"):
        handle = ray_private.route_in_this_loop(_unrouted_handle())
        assert handle.init_options is not None
        assert handle.init_options._run_router_in_separate_loop is False
        assert handle.is_initialized


def test_llm_internal_classes() -> None:
    with naming("ray.llm._internal…ModelLoadingConfig"):
        config = LLMConfig(model_loading_config={"model_id": "m", "model_source": "/models/m"})
        assert isinstance(config.model_loading_config, ray_private_llm.ModelLoadingConfig)
    with naming("ray.llm._internal…CallbackBase.on_before_node_init"):
        assert callable(ray_private_llm.CallbackBase.on_before_node_init)
