"""本项目用到的 Ray Serve 私有 API，全部在这里（别处一律不直接碰带下划线的 Ray 名字）；
Ray LLM 的两个在 ray_private_llm.py（只有 LLM 部署用，分开是因为它们带进 torch）。

NOTE: 这些名字不在 Ray 的公开 API 里，升级 Ray 时可能改名或改语义而不报错。
tests/unit/test_ray_private.py 逐个真实调用它们（不启动 Ray）：升级后哪个变了，单元层失败，
失败信息指名是哪个 API。每个用处都写明为什么没有公开 API 能做到。
"""

from __future__ import annotations

from typing import Any

from ray.serve import context
from ray.serve.handle import DeploymentHandle

__all__ = [
    "by_reference",
    "current_request_id",
    "route_in_this_loop",
    "set_request_id",
]


def set_request_id(request_id: str) -> None:
    """当前 asyncio 任务之后的句柄调用以 request_id 作 Serve 的请求 id。

    为什么是私有 API：Serve 只在 HTTP 请求进来时设请求上下文；作业在后台任务里执行，要让渲染、
    LLM、回调副本的访问日志带上 trace_id，只能自己设（公开 API 没有设置它的入口）。
    """
    context._set_request_context(request_id=request_id)


def current_request_id() -> str:
    """当前请求的 Serve 请求 id（代理与入口访问日志里记的那个）。

    为什么是私有 API：Serve 没有公开读取请求上下文的函数（只有 replica 上下文是公开的）。
    """
    request_id: str = context._get_serve_request_context().request_id
    return request_id


def by_reference(handle: DeploymentHandle[Any], enabled: bool) -> DeploymentHandle[Any]:
    """句柄的传输：True 走 Ray actor 调用（对象引用），False 走副本的内部 gRPC。

    为什么是私有 API：Serve 的吞吐模式把默认改成 gRPC，而 handle.options 的公开参数里没有
    选择传输的；LLM 副本在别的节点上只能走 actor 调用（固定端口段），轻量部署走 gRPC 更快。
    """
    return handle.options(_by_reference=enabled)


def route_in_this_loop(handle: DeploymentHandle[Any]) -> DeploymentHandle[Any]:
    """让句柄的路由器跑在当前副本的事件循环里（须在第一次 options()/remote() 之前、在循环内调用）。

    为什么是私有 API：Serve 默认把路由器放在另一个线程的循环里，每次调用两次跨线程交接；
    只有 DeploymentHandle._init 能改（公开的 options 不管路由器放在哪）。
    """
    handle._init(_run_router_in_separate_loop=False)  # type: ignore[no-untyped-call]
    return handle
