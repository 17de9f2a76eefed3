"""CPU 版 vLLM 的 OpenMP 线程绑定：按本进程真正能用的 CPU 数给引擎定线程数。

vLLM 默认（`VLLM_CPU_OMP_THREADS_BIND=auto`）按 CPU 亲和性里的核数开线程；在带 CFS 配额的
容器里，亲和性可能列出宿主机的几十个核，而配额只有两个——几十个计算线程会用光配额，
同一 cgroup 里的 Ray、测试进程在引擎生成期间整段停住。这里按“亲和性 ∩ 配额”算出可用核数，
给引擎留一个核以外的（至少一个）核，并显式绑定。
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# cgroup v2 / v1 的 CPU 配额文件
_CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit() -> float | None:
    """cgroup 的 CPU 配额（以核计）；没有配额或读不到时为 None。"""
    try:
        if _CGROUP_V2_MAX.exists():
            quota, period = _CGROUP_V2_MAX.read_text(encoding="ascii").split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if _CGROUP_V1_QUOTA.exists():
            quota_us = int(_CGROUP_V1_QUOTA.read_text(encoding="ascii"))
            period_us = int(_CGROUP_V1_PERIOD.read_text(encoding="ascii"))
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def usable_cpu_ids() -> list[int]:
    """本进程能用的 CPU：亲和性列表，截到配额允许的核数。"""
    allowed = sorted(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        allowed = allowed[: max(1, math.ceil(limit))]
    return allowed


def engine_cpu_ids() -> list[int]:
    """给引擎计算线程的核：可用核里留出一个给调度进程与控制面（至少给引擎一个）。"""
    usable = usable_cpu_ids()
    return usable[: max(1, len(usable) - 1)]


def engine_cpu_env() -> dict[str, str]:
    """vLLM CPU 引擎进程的环境变量：显式绑定到 engine_cpu_ids()。"""
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(cpu) for cpu in engine_cpu_ids())}


def describe_cpus() -> str:
    """一行 CPU 概况，写进失败信息便于在别的机器上定位。"""
    return (
        f"affinity={sorted(os.sched_getaffinity(0))} cgroup_limit={cgroup_cpu_limit()} "
        f"engine_cpus={engine_cpu_ids()} loadavg={os.getloadavg()}"
    )
