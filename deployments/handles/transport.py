"""轻量部署（渲染、回调、账本）句柄的传输：入口副本与 Ledger 副本共用。"""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.ray_private import by_reference, route_in_this_loop
from serve_app.core.settings import HandleTransport, Settings


def light_handle(settings: Settings, handle: DeploymentHandle[Any]) -> DeploymentHandle[Any]:
    """按 handle_transport 选一个轻量部署句柄的传输（须在副本的事件循环里、第一次调用之前）。

    grpc：请求与结果直接经副本的内部 gRPC 服务（不经对象存储），路由器跑在本副本的事件循环里；
    actor：Ray actor 调用。两种都显式写上：Serve 的吞吐模式（cluster/ray_env.sh）把默认改成了 gRPC。
    """
    if settings.handle_transport is not HandleTransport.GRPC:
        return by_reference(handle, True)
    # 路由器放在本副本的事件循环里；Serve 在循环里调用构造函数，此刻还没有 options()/remote()
    return by_reference(route_in_this_loop(handle), False)
