"""入口到轻量部署的句柄传输：handle_transport 选 gRPC 或 Ray actor 调用。

真实的调用由 e2e 与故障层证明（它们都用默认的 grpc）。
"""

from __future__ import annotations

from typing import Any, cast

from ray.serve.handle import DeploymentHandle

from deployments.ingress import light_handles, llm_handle
from serve_app.core.settings import HandleTransport, Settings


class _RecordingHandle:
    """只记录 options() 的假句柄。"""

    def __init__(
        self, name: str, options: dict[str, Any] | None = None, init: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self.applied = options or {}
        self.init = init

    def _init(self, **kwargs: Any) -> None:
        # 真句柄只能初始化一次，且须在 options() 之前
        assert self.init is None and not self.applied
        self.init = kwargs

    def options(self, **kwargs: Any) -> _RecordingHandle:
        return _RecordingHandle(self.name, {**self.applied, **kwargs}, self.init)


def _handles(with_ledger: bool = True) -> tuple[Any, Any, Any]:
    ledger = _RecordingHandle("ledger") if with_ledger else None
    return _RecordingHandle("renderer"), _RecordingHandle("callbacks"), ledger


def _settings(**overrides: Any) -> Settings:
    return Settings.from_args({"llm_mode": "external", "auth_required": False, **overrides})


def _as_handle(handle: Any) -> DeploymentHandle[Any]:
    return cast(DeploymentHandle[Any], handle)


def test_grpc_is_the_default_for_every_light_handle() -> None:
    settings = _settings()
    assert settings.handle_transport is HandleTransport.GRPC
    renderer, callbacks, ledger = light_handles(settings, *map(_as_handle, _handles()))
    for handle in (renderer, callbacks, ledger):
        # _by_reference=False：Serve 经副本的内部 gRPC 服务收发请求与结果；路由器在本副本的循环里
        recorded = cast(_RecordingHandle, handle)
        assert recorded.applied == {"_by_reference": False}
        assert recorded.init == {"_run_router_in_separate_loop": False}


def test_actor_transport_is_explicit() -> None:
    # Serve 的吞吐模式把句柄的默认传输改成 gRPC：actor 必须显式写 _by_reference=True
    settings = _settings(handle_transport="actor")
    handles = light_handles(settings, *map(_as_handle, _handles()))
    recorded = [cast(_RecordingHandle, h) for h in handles]
    assert [h.name for h in recorded] == ["renderer", "callbacks", "ledger"]
    assert all(h.init is None and h.applied == {"_by_reference": True} for h in recorded)


def test_llm_handle_stays_on_actor_calls() -> None:
    # 跨主机到 GPU worker：走固定端口段的 actor 调用，不走副本随机端口的 gRPC
    handle = cast(_RecordingHandle, llm_handle(_as_handle(_RecordingHandle("llm"))))
    assert handle.applied == {"_by_reference": True}
    assert handle.init is None
    assert llm_handle(None) is None


def test_postgres_ledger_has_no_ledger_handle_to_switch() -> None:
    settings = _settings()
    renderer, callbacks, ledger = light_handles(settings, *map(_as_handle, _handles(False)))
    assert ledger is None
    assert cast(_RecordingHandle, renderer).applied == {"_by_reference": False}
