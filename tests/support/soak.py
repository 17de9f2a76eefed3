"""Chaos soak：稳定的开环负载 + 由种子决定、互相重叠的故障；结束时对账（丢失必须为 0）。

同一段代码跑两处：故障层的短 soak（tests/fault/test_soak.py，几分钟、固定种子）与
`make soak`（benchmarks/soak.py，默认 30 分钟）。应用是 tests/support/fault_app.py 的
真实 Serve 应用（假引擎）：
杀入口 / 渲染 / 回调 / LLM / Ledger 副本、重启 Postgres、backend B 拒绝连接 / 答 500 / 挂起过超时、
SIGSTOP 一个入口副本过租约、整个应用重启一次；负载里混着取消与期限。

对账按 backend B 真正以 2xx 收下的回调：
- lost：受理了却没有一个 2xx 终态回调——必须为 0；
- duplicates：收下不止一次的作业（同一个 webhook-id，接收方按它去重）：故障期间设计只承诺至少一次；
- exactly_once_violations：在最后一个故障结束之后才进账本的作业收到不止一次——设计承诺恰好一次，
  必须为 0。进账本的时刻按客户端能确定的最早时刻算（受理那次尝试的发出时刻；幂等重放则是第一次
  提交的时刻），不按收到 202 算：故障中已落账、故障后才拿到 202 的作业经历过故障；
- inconsistent：同一作业的几次回调状态或 webhook-id 不一致——必须为 0。
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from loguru import logger
from standardwebhooks.webhooks import Webhook

from serve_app.core.settings import JobPolicy, Settings
from tests.support.fault_app import LEASE_S, TERMINAL, FaultApp, fault_settings
from tests.support.files import replace_file

# 持续一段时间的故障（结束时撤销）；其余是一下子的（杀掉即补起）
WINDOWED = frozenset({"backend_refuse", "backend_500", "backend_hang", "freeze_ingress"})
RESTART = "restart_app"
_KILL_TARGETS = {
    "kill_ingress": "ReportIngress",
    "kill_render": "TemplateRenderer",
    "kill_callback": "CallbackSender",
    "kill_ledger": "Ledger",
}
# 负载的组成：普通作业、提交后不久取消的、期限比生成短（必然 expired）的
MIX = (("normal", 0.8), ("cancel", 0.1), ("deadline", 0.1))
PRIORITIES = ("high", "normal", "normal", "low")
# 客户端（backend B）对一次提交最多重交多久：整体重启后积压的重交会撞上排队上限
# （429 + Retry-After），要等积压消化
SUBMIT_PATIENCE_S = 300
# soak 的排队上限：产品的默认值（见 Soak.run）
SOAK_MAX_ACTIVE_JOBS: int = JobPolicy.model_fields["max_active_jobs"].default


@dataclass(frozen=True)
class Fault:
    """时间表上的一个故障：开始后 at_s 秒注入，持续 duration_s 秒（一下子的为 0）。"""

    at_s: float
    kind: str
    duration_s: float = 0.0


def fault_schedule(
    seed: int, active_s: float, *, postgres: bool, mean_gap_s: float = 8.0
) -> list[Fault]:
    """种子决定的时间表：每种故障至少一次、整体重启恰好一次，其余按平均间隔随机补上（会重叠）。"""
    rng = random.Random(seed)
    kinds = [
        "kill_ingress",
        "kill_render",
        "kill_callback",
        "kill_llm",
        "backend_refuse",
        "backend_500",
        "backend_hang",
        "freeze_ingress",
        "restart_postgres" if postgres else "kill_ledger",
    ]

    def one(kind: str, at: float) -> Fault:
        duration = round(rng.uniform(3.0, 10.0), 1) if kind in WINDOWED else 0.0
        return Fault(round(at, 1), kind, duration)

    faults = [one(kind, rng.uniform(1.0, active_s)) for kind in kinds]
    faults.append(Fault(round(active_s * rng.uniform(0.35, 0.55), 1), RESTART))
    for _ in range(max(0, int(active_s / mean_gap_s) - len(faults))):
        faults.append(one(rng.choice(kinds), rng.uniform(1.0, active_s)))
    return sorted(faults, key=lambda f: f.at_s)


@dataclass
class FaultRecord:
    """执行过的故障：开始、结束的时刻（monotonic），没做成时写原因。"""

    fault: Fault
    started: float
    ended: float
    skipped: str | None = None


@dataclass
class SoakJob:
    """负载里受理了的一个作业。"""

    trace_id: str
    kind: str
    accepted_at: float  # 收到 202 的时刻
    admitted_after: float  # 作业最早可能进账本的时刻（见 Soak._retrying）


@dataclass
class Rotation:
    """soak 中途不停机轮换：调用方 soak 的 API key 与回调签名密钥都从文件读，先加新的、再删旧的。"""

    keys_file: Path
    secrets_file: Path
    old_key: str = "soak-old-key"
    new_key: str = "soak-new-key"
    old_secret: str = "whsec_" + "O" * 32
    new_secret: str = "whsec_" + "N" * 32
    reload_s: float = 0.5
    client_key: str = "soak-old-key"
    dropped_at: float | None = None

    def write(self, keys: list[str], secrets: list[str]) -> None:
        """像运维那样原子地换掉两个文件。"""
        replace_file(self.keys_file, "".join(f"soak:{k}\n" for k in keys))
        replace_file(self.secrets_file, "".join(f"{secret}\n" for secret in secrets))

    def add(self) -> None:
        """第一步：新旧并存；等各副本都重读过（几个 reload_s），客户端换成新 key。"""
        self.write([self.new_key, self.old_key], [self.new_secret, self.old_secret])
        time.sleep(self.reload_s * 6)
        self.client_key = self.new_key

    def drop(self) -> None:
        """第二步：删掉旧 key、旧密钥。"""
        self.write([self.new_key], [self.new_secret])
        self.dropped_at = time.monotonic()

    def settings(self, base: Settings) -> Settings:
        """故障层的设置加上两个文件与鉴权（账本与 base 相同）。"""
        jobs = base.jobs
        ledger: dict[str, Any] = (
            {"ledger_url": jobs.ledger_url, "ledger_call_timeout_s": jobs.ledger_call_timeout_s}
            if jobs.ledger_url is not None
            else {"ledger_path": jobs.ledger_path}
        )
        assert base.log_json_path is not None
        self.write([self.old_key], [self.old_secret])
        return fault_settings(
            base.log_json_path.parent,
            ledger,
            base.engine,
            api_keys_file=self.keys_file,
            callback_signing_secret_file=self.secrets_file,
            secret_reload_s=self.reload_s,
            auth_required=True,
        )

    def signed_by(self, record: Any, secret: str) -> bool:
        """这个回调带不带 secret 的签名（不看时间戳新旧：soak 结束后才核对）。"""
        headers = record.headers
        when = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        expected = Webhook(secret).sign(headers["webhook-id"], when, record.raw.decode())
        return expected in headers.get("webhook-signature", "").split(" ")


class Chaos:
    """按时间表注入故障；不同资源上的故障互相重叠，同一资源（backend B、冻结）上的排队做。"""

    def __init__(
        self, app: FaultApp, ingress_replicas: int, rotation: Rotation | None = None
    ) -> None:
        self._app = app
        self._ingress_replicas = ingress_replicas
        self._rotation = rotation
        self._backend = threading.Lock()
        self._freeze = threading.Lock()
        self._restart = threading.Lock()

    def run(self, fault: Fault) -> FaultRecord:
        """执行一个故障（阻塞到它结束）；出错只记为跳过，不中断 soak。"""
        started = time.monotonic()
        try:
            skipped = getattr(self, f"_{fault.kind}", None)
            reason = self._kill(fault.kind) if skipped is None else skipped(fault.duration_s)
        except Exception as exc:  # noqa: BLE001 - 故障撞上重启等：记下，继续
            reason = f"{type(exc).__name__}: {exc}"
        if reason:
            logger.warning("soak 故障 {} 跳过：{}", fault.kind, reason)
        else:
            logger.info("soak 故障 {} 完成（{:.1f}s）", fault.kind, time.monotonic() - started)
        return FaultRecord(fault, started, time.monotonic(), reason or None)

    def _kill(self, kind: str) -> str:
        self._after_restart()
        self._app.kill_replica(
            self._app.llm_deployment if kind == "kill_llm" else _KILL_TARGETS[kind]
        )
        return ""

    def _after_restart(self) -> None:
        """整体重启进行中就等它完成（那时没有副本可杀、可冻）。"""
        with self._restart:
            pass

    def _exclusive(self, lock: threading.Lock, what: str) -> bool:
        """同一资源上的故障排队（不跳过）：backend B 一次只处在一种坏状态。"""
        if not lock.acquire(timeout=120):
            logger.warning("soak：{} 上的故障两分钟没轮到", what)
            return False
        return True

    def _backend_refuse(self, seconds: float) -> str:
        if not self._exclusive(self._backend, "backend B"):
            return "backend B 已有故障"
        try:
            self._app.backend.stop()
            time.sleep(seconds)
        finally:
            self._app.backend.start()
            self._backend.release()
        return ""

    def _scripted(self, seconds: float, **script: Any) -> str:
        if not self._exclusive(self._backend, "backend B"):
            return "backend B 已有故障"
        try:
            self._app.backend.receiver.script(**script)
            time.sleep(seconds)
        finally:
            self._app.backend.receiver.script()
            self._backend.release()
        return ""

    def _backend_500(self, seconds: float) -> str:
        return self._scripted(seconds, default_status=500)

    def _backend_hang(self, seconds: float) -> str:
        # 每个响应都拖过回调的读超时：本服务当作没送达而重投，接收方其实收下了（至少一次的来源）
        hang = self._app.settings.callback.read_timeout_s + 2
        return self._scripted(seconds, delay_s=hang)

    def _freeze_ingress(self, seconds: float) -> str:
        self._after_restart()
        if not self._exclusive(self._freeze, "冻结"):
            return "已有副本被冻住"
        try:
            pid = min(self._app.replica_pids("ReportIngress"))
            os.kill(pid, signal.SIGSTOP)
            try:
                # 冻过租约：它的作业由别的副本接手；醒来后发现租约已丢，不重复执行
                time.sleep(max(seconds, LEASE_S + 2))
            finally:
                os.kill(pid, signal.SIGCONT)
        finally:
            self._freeze.release()
        return ""

    def _rotate_add(self, _: float) -> str:
        assert self._rotation is not None
        self._rotation.add()
        return ""

    def _rotate_drop(self, _: float) -> str:
        assert self._rotation is not None
        self._rotation.drop()
        return ""

    def _restart_postgres(self, _: float) -> str:
        assert self._app.postgres is not None
        self._app.postgres.restart()
        return ""

    def _restart_app(self, _: float) -> str:
        with self._restart, self._freeze:
            self._app.shutdown()
            self._app.deploy(ingress_replicas=self._ingress_replicas)
        return ""


@dataclass
class SoakReport:
    """一次 soak 的对账。"""

    seed: int
    duration_s: float
    rate_per_s: float
    accepted: int
    outcomes: dict[str, int]
    lost: int
    duplicates: int
    duplicate_share: float
    exactly_once_violations: int
    # 最后一个故障结束之后才进账本的作业数：恰好一次查的是它们（0 就是这项没有查到任何作业）
    exactly_once_checked: int
    inconsistent: int
    refused_4xx: int
    # 重交了 SUBMIT_PATIENCE_S 仍没被受理（一直 429 / 5xx / 连不上）而放弃的提交：没受理，不算丢
    gave_up: int
    # 轮换时：验不过新旧任何一把的回调数；删掉旧密钥之后没有新密钥签名的回调数
    signature_failures: int
    unsigned_by_new_after_drop: int
    accept_to_callback_p50_s: float
    accept_to_callback_p99_s: float
    faults: list[dict[str, Any]] = field(default_factory=list)
    lost_trace_ids: list[str] = field(default_factory=list)  # 丢失的作业（前 20 个，查账本用）
    # 违反恰好一次的作业（前 20 个）：测试失败时按它们从日志里取出经过
    violation_trace_ids: list[str] = field(default_factory=list)
    timeline: list[int] = field(default_factory=list)  # 每 5 秒收下的回调数（第一次）

    def line(self) -> str:
        """一行汇总。"""
        return (
            f"soak seed={self.seed} {self.duration_s:g}s {self.rate_per_s:g}/s: "
            f"accepted={self.accepted} {dict(self.outcomes)} lost={self.lost} "
            f"duplicates={self.duplicates} ({self.duplicate_share:.1%}) "
            f"exactly-once violations={self.exactly_once_violations}"
            f"/{self.exactly_once_checked} "
            f"inconsistent={self.inconsistent} refused={self.refused_4xx} "
            f"gave_up={self.gave_up} "
            f"signature failures={self.signature_failures}"
            f"/{self.unsigned_by_new_after_drop} p50/p99 {self.accept_to_callback_p50_s:.1f}/"
            f"{self.accept_to_callback_p99_s:.1f}s faults={len(self.faults)}"
        )

    def to_json(self) -> dict[str, Any]:
        """可写进 JSON 的字典。"""
        return asdict(self)


class Soak:
    """一次 soak：负载线程 + 每个故障一个线程；run() 结束时返回对账。"""

    def __init__(
        self,
        app: FaultApp,
        *,
        seed: int,
        duration_s: float,
        rate_per_s: float,
        quiet_tail_s: float,
        ingress_replicas: int = 2,
        rotate_secrets: bool = True,
        mean_fault_gap_s: float = 8.0,
    ) -> None:
        self._app = app
        self._seed = seed
        self._duration_s = duration_s
        self._rate = rate_per_s
        self._quiet_tail_s = quiet_tail_s
        self._ingress_replicas = ingress_replicas
        self._rng = random.Random(seed)
        self._schedule = fault_schedule(
            seed,
            duration_s - quiet_tail_s,
            postgres=app.postgres is not None,
            mean_gap_s=mean_fault_gap_s,
        )
        active_s = duration_s - quiet_tail_s
        self._rotation: Rotation | None = None
        if rotate_secrets:
            assert app.settings.log_json_path is not None
            work = app.settings.log_json_path.parent
            self._rotation = Rotation(work / "soak-api-keys", work / "soak-signing-secrets")
            self._schedule += [
                Fault(round(active_s * 0.25, 1), "rotate_add"),
                Fault(round(active_s * 0.65, 1), "rotate_drop"),
            ]
        self.jobs: list[SoakJob] = []
        self.refused_4xx = 0
        self.gave_up = 0
        self._records: list[FaultRecord] = []
        self._lock = threading.Lock()

    def run(self, drain_timeout_s: float = 300) -> SoakReport:
        """部署（入口 ingress_replicas 个）、跑负载与故障、等所有作业都有回调，然后对账。"""
        original = self._app.settings
        settings = original if self._rotation is None else self._rotation.settings(original)
        # 排队上限用产品的默认值：故障层的 60 是为了测 429，soak 里引擎停几分钟（真实引擎被杀后
        # 重新加载、整体重启）时 60 份很快排满，客户端一直吃 429、重交到放弃；持久的队列应当接下来
        jobs = settings.jobs.model_copy(update={"max_active_jobs": SOAK_MAX_ACTIVE_JOBS})
        self._app.settings = settings.model_copy(update={"jobs": jobs})
        try:
            return self._run(drain_timeout_s)
        finally:
            self._app.settings = original

    def _run(self, drain_timeout_s: float) -> SoakReport:
        self._app.deploy(ingress_replicas=self._ingress_replicas)
        chaos = Chaos(self._app, self._ingress_replicas, self._rotation)
        self._started = time.monotonic()
        threads = [
            threading.Timer(f.at_s, self._inject, args=(chaos, f), kwargs=None)
            for f in self._schedule
        ]
        for thread in threads:
            thread.daemon = True
            thread.start()
        asyncio.run(self._load())
        for thread in threads:
            thread.join()
        self._wait_callbacks(drain_timeout_s)
        time.sleep(3)  # 留出时间暴露可能的重复回调
        return self._report()

    def _inject(self, chaos: Chaos, fault: Fault) -> None:
        record = chaos.run(fault)
        with self._lock:
            self._records.append(record)

    # ---- 负载 ----

    async def _load(self) -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            tasks: list[asyncio.Task[None]] = []
            count = 0
            while not self._load_done(time.monotonic()):
                kind = self._rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
                priority = self._rng.choice(PRIORITIES)
                sleep_s = round(self._rng.uniform(0.2, 1.5), 2)
                cancel_after = round(self._rng.uniform(0.1, 2.0), 2)
                tasks.append(
                    asyncio.create_task(self._one(client, kind, priority, sleep_s, cancel_after))
                )
                count += 1
                wake = self._started + count / self._rate
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
            await asyncio.gather(*tasks)

    def _load_done(self, now: float) -> bool:
        """负载跑满 duration_s，且时间表上的故障都做完、最后一个结束后又跑了 quiet_tail_s 秒。

        整体重启在 2 核上要一分钟，排在它后面的故障常常到负载快结束才做完：只按 duration_s 停，
        无故障的一段里几乎没有新作业，恰好一次就查不到什么。最多再多跑 SUBMIT_PATIENCE_S 秒。"""
        elapsed = now - self._started
        if elapsed < self._duration_s:
            return False
        if elapsed >= self._duration_s + SUBMIT_PATIENCE_S:
            return True
        with self._lock:
            if len(self._records) < len(self._schedule):
                return False
        return now - self._last_fault_end() >= self._quiet_tail_s

    def _last_fault_end(self) -> float:
        """最后一个做完的故障结束的时刻（还没有故障时是开始的时刻）。"""
        with self._lock:
            return max((r.ended for r in self._records), default=self._started)

    async def _one(
        self,
        client: httpx.AsyncClient,
        kind: str,
        priority: str,
        sleep_s: float,
        cancel_after: float,
    ) -> None:
        body = self._app.body(f"[[sleep:{sleep_s if kind == 'normal' else 5}]]", priority=priority)
        if kind == "deadline":
            body["deadline_s"] = 2
        # 像 backend B 一样：带 Idempotency-Key，连接失败、5xx、429 就按原样重交
        key = str(uuid.uuid4())
        trace_id, admitted_after = await self._retrying(
            client, "POST", "/v1/reports", json=body, headers={"Idempotency-Key": key}
        )
        if trace_id is None:
            return
        with self._lock:
            self.jobs.append(SoakJob(trace_id, kind, time.monotonic(), admitted_after))
        if kind == "cancel":
            await asyncio.sleep(cancel_after)
            await self._retrying(client, "DELETE", f"/v1/reports/{trace_id}")

    async def _retrying(
        self, client: httpx.AsyncClient, method: str, path: str, **kwargs: Any
    ) -> tuple[str | None, float]:
        """发到受理为止（最多 SUBMIT_PATIENCE_S 秒）；返回 (trace_id, 最早可能生效的时刻)，
        没受理时 trace_id 为 None。

        最早生效的时刻：答复不是幂等重放（`Idempotent-Replayed`）就是最后一次发出的时刻——之前的
        尝试都没受理；是重放就是第一次发出的时刻（之前哪一次在服务端落了账不知道）。
        4xx（除 409、429 与整体重启时代理的 404）记为被拒；重交到时限仍没受理记为放弃
        （像 backend B 那样报给自己的运维，不让整个 soak 停下）。"""
        first = time.monotonic()
        deadline = first + SUBMIT_PATIENCE_S
        extra_headers: dict[str, str] = dict(kwargs.pop("headers", {}))
        while time.monotonic() < deadline:
            headers = dict(extra_headers)
            if self._rotation is not None:
                headers["Authorization"] = f"Bearer {self._rotation.client_key}"
            sent = time.monotonic()
            try:
                response = await client.request(
                    method, self._app.base_url + path, headers=headers, **kwargs
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.5)
                continue
            if response.status_code in (202, 409) or (
                method == "POST" and response.status_code == 200
            ):
                # 409：别的尝试已落账（或 DELETE 时已有结果）——与重放一样按第一次发出算
                replayed = (
                    response.status_code == 409
                    or response.headers.get("Idempotent-Replayed") == "true"
                )
                trace_id = str(response.json().get("trace_id", "")) or None
                return trace_id, first if replayed else sent
            # 整体重启（serve.delete 再 serve.run）期间代理对没有应用的路径答 404：与真实集群重启时
            # 连接被拒一样，是“暂时不可用”，照样重交
            restarting = response.status_code == 404 and "/-/routes" in response.text
            if restarting or response.status_code == 429 or response.status_code >= 500:
                await asyncio.sleep(float(response.headers.get("Retry-After", "0.5")))
                continue
            logger.error(
                "soak：{} {} 被拒 {}：{}", method, path, response.status_code, response.text
            )
            with self._lock:
                self.refused_4xx += 1
            return None, first
        logger.error("soak：{} {} {} 秒内没有被受理，放弃", method, path, SUBMIT_PATIENCE_S)
        with self._lock:
            self.gave_up += 1
        return None, first

    # ---- 对账 ----

    def _delivered(self) -> dict[str, list[Any]]:
        by_id: dict[str, list[Any]] = {job.trace_id: [] for job in self.jobs}
        for record in self._app.backend.received():
            trace_id = record.body.get("trace_id")
            if trace_id in by_id and 200 <= record.status_returned < 300:
                by_id[trace_id].append(record)
        return by_id

    def _wait_callbacks(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._delivered().values()):
                return
            time.sleep(1)

    def _report(self) -> SoakReport:
        delivered = self._delivered()
        outcomes: Counter[str] = Counter()
        latencies: list[float] = []
        duplicates = inconsistent = violations = 0
        lost_ids: list[str] = []
        violation_ids: list[str] = []
        last_fault_end = self._last_fault_end()
        checked = sum(job.admitted_after > last_fault_end for job in self.jobs)
        for job in self.jobs:
            calls = delivered[job.trace_id]
            if not calls:
                outcomes["lost"] += 1
                lost_ids.append(job.trace_id)
                continue
            statuses = {c.body["status"] for c in calls}
            webhook_ids = {c.headers.get("webhook-id") for c in calls}
            if len(statuses) != 1 or webhook_ids != {f"msg_{job.trace_id}"}:
                inconsistent += 1
            status = calls[0].body["status"]
            outcomes[status if status in TERMINAL else f"other:{status}"] += 1
            latencies.append(min(c.received_at for c in calls) - job.accepted_at)
            if len(calls) > 1:
                duplicates += 1
                if job.admitted_after > last_fault_end:
                    violations += 1
                    violation_ids.append(job.trace_id)
        signature_failures, unsigned_after_drop = self._signatures(delivered)
        latencies.sort()
        return SoakReport(
            seed=self._seed,
            duration_s=self._duration_s,
            rate_per_s=self._rate,
            accepted=len(self.jobs),
            outcomes=dict(outcomes),
            lost=outcomes["lost"],
            duplicates=duplicates,
            duplicate_share=duplicates / max(1, len(self.jobs)),
            exactly_once_violations=violations,
            exactly_once_checked=checked,
            inconsistent=inconsistent,
            refused_4xx=self.refused_4xx,
            gave_up=self.gave_up,
            signature_failures=signature_failures,
            unsigned_by_new_after_drop=unsigned_after_drop,
            accept_to_callback_p50_s=statistics.median(latencies) if latencies else 0.0,
            accept_to_callback_p99_s=(
                latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0
            ),
            faults=self._fault_rows(delivered),
            lost_trace_ids=lost_ids[:20],
            violation_trace_ids=violation_ids[:20],
            timeline=self._timeline(delivered),
        )

    def stories(self, trace_ids: list[str], limit: int = 60) -> str:
        """这几个作业在各副本日志里的经过（相对开始的秒数、进程、消息）：对账不过时看它们怎么了。"""
        wanted = set(trace_ids)
        started_wall = time.time() - (time.monotonic() - self._started)
        lines = []
        for record in self._app.json_logs():
            trace_id = record["extra"].get("trace_id")
            if trace_id in wanted:
                at = record["time"]["timestamp"] - started_wall
                lines.append(
                    f"{at:7.1f}s {trace_id[:8]} pid={record['process']['id']} {record['message']}"
                )
        return "\n".join(lines[-limit:])

    def _signatures(self, delivered: dict[str, list[Any]]) -> tuple[int, int]:
        """(新旧哪把都验不过的回调数, 删掉旧密钥之后没有新密钥签名的回调数)。"""
        rotation = self._rotation
        if rotation is None:
            return 0, 0
        failures = unsigned = 0
        settle = (rotation.dropped_at or float("inf")) + rotation.reload_s * 6
        for calls in delivered.values():
            for call in calls:
                new_ok = rotation.signed_by(call, rotation.new_secret)
                if not (new_ok or rotation.signed_by(call, rotation.old_secret)):
                    failures += 1
                elif call.received_at > settle and not new_ok:
                    unsigned += 1
        return failures, unsigned

    def _timeline(self, delivered: dict[str, list[Any]]) -> list[int]:
        """每 5 秒收下的（第一次）回调数。"""
        timeline = [0] * (int(self._duration_s / 5) + 60)
        for calls in delivered.values():
            if calls:
                bucket = int((min(c.received_at for c in calls) - self._started) / 5)
                if 0 <= bucket < len(timeline):
                    timeline[bucket] += 1
        while timeline and timeline[-1] == 0:
            timeline.pop()
        return timeline

    def _fault_rows(self, delivered: dict[str, list[Any]]) -> list[dict[str, Any]]:
        """每个故障：开始、结束、跳过的原因、恢复时间（结束 → 之后受理的作业第一份成功回调）。

        只看 succeeded：取消与期限到了的回调不经过引擎，引擎还没恢复时它们照样很快。"""
        rows = []
        for record in sorted(self._records, key=lambda r: r.started):
            after = [
                min(c.received_at for c in delivered[j.trace_id])
                for j in self.jobs
                if j.accepted_at >= record.ended
                and delivered[j.trace_id]
                and delivered[j.trace_id][0].body["status"] == "succeeded"
            ]
            rows.append(
                {
                    **asdict(record.fault),
                    "started_s": round(record.started - self._started, 1),
                    "ended_s": round(record.ended - self._started, 1),
                    "skipped": record.skipped,
                    "recovery_s": round(min(after) - record.ended, 2) if after else None,
                }
            )
        return rows
