"""调用 DeploymentHandle 时可重试的 Ray 异常（各阶段共用一份）。"""

from __future__ import annotations

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

# 副本死亡、暂不可用或背压：换个副本或稍后重试可能成功
TRANSIENT_HANDLE_ERRORS: tuple[type[Exception], ...] = (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    BackPressureError,
    DeploymentUnavailableError,
)
