"""统一的类型化配置：在应用构建器里解析一次，经 `.bind()` 传给各部署。"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serve_app.core.config_conflicts import environment, find_conflicts

# 仓库根目录：相对路径（模板文件等）据此解析，与进程当前目录无关
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _from_root(path: Path) -> Path:
    """相对路径按仓库根目录解析（与进程当前目录无关）。"""
    return path if path.is_absolute() else PROJECT_ROOT / path


class LLMMode(StrEnum):
    """LLM 阶段的运行方式。"""

    SERVE_LLM = "serve_llm"  # 集群内 Ray Serve LLM（LLMServer / vLLM）
    EXTERNAL = "external"  # 外部 OpenAI 兼容服务（如独立的 vllm-service）


class HandleTransport(StrEnum):
    """入口调用轻量部署（渲染、回调、账本）的传输方式。"""

    GRPC = "grpc"  # Serve 副本的内部 gRPC 服务：每次调用的 CPU 约为 Ray actor 调用的四成
    ACTOR = "actor"  # Ray actor 调用（经 raylet 的端口段）


class _Strict(BaseModel):
    """拒绝未知字段：配置写错时部署即失败，而不是请求时才出错。"""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineSettings(_Strict):
    """集群内 vLLM 引擎（LLMServer）的配置。"""

    model_id: str = Field(
        "report-llm",
        description="对外的模型名；LLMServer 部署名为 `LLMServer:<model_id>`",
        pattern=r"^[A-Za-z0-9_.\-]+$",
    )
    model_source: str = Field(
        "", description="HF 模型名或本地目录；为空时无法部署（make run 会自动生成小模型）"
    )
    accelerator: Literal["gpu", "cpu"] = "gpu"
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="透传给 vLLM 引擎的参数"
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="LLM 副本进程的环境变量（如 VLLM_CPU_KVCACHE_SPACE）"
    )
    placement_group_config: dict[str, Any] | None = Field(
        None, description="引擎 worker 的资源 bundle；为空用 Ray Serve LLM 默认值"
    )
    replica_num_cpus: float = Field(
        1.0, ge=0, description="LLMServer 副本进程本身占用的 CPU（不含引擎 worker）"
    )
    replica_resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "LLM 副本要求的 Ray 自定义资源，如 {reports_llm: 0.01}：只有广播了该资源的节点"
            "（cluster/start_worker.sh）才会放 LLM 副本"
        ),
    )


class ExternalLLMSettings(_Strict):
    """外部 OpenAI 兼容服务的配置。"""

    base_url: AnyHttpUrl = AnyHttpUrl("http://vllm-service:8000/v1")
    model: str = Field("", description="服务端的模型名；为空时取 /models 的第一个")
    api_key: SecretStr = SecretStr("EMPTY")


class LLMCallPolicy(_Strict):
    """调用 LLM 的超时与重试。"""

    timeout_s: float = Field(300.0, gt=0, description="单次生成的超时（秒）")
    max_attempts: int = Field(3, ge=1, le=10, description="瞬时错误的最多尝试次数")
    initial_backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(10.0, ge=0)
    ready_timeout_s: float = Field(5.0, gt=0, description="/readyz 探测引擎的超时")
    cold_start_timeout_s: float = Field(
        900.0,
        gt=0,
        le=3600,
        description="LLMServer 缩到零个副本（min_replicas: 0）后，作业等它冷启动的上限；"
        "超过以 llm_timeout 结束并触发 ReportsLLMColdStartSlow 告警。冷启动不占 timeout_s",
    )
    output_retries: int = Field(
        1,
        ge=0,
        le=5,
        description="报告不符合声明的格式（不是 JSON、不符合 schema）时重新生成的次数",
    )
    engine_priority: bool = Field(
        False,
        description="外部引擎模式：把作业的优先级发给引擎（vLLM 的 priority 字段）。"
        "只在外部 vLLM 以 --scheduling-policy priority 启动时打开："
        "没开优先级调度的 vLLM 对非 0 的 priority 答 400。"
        "集群内的 LLMServer 总是发（各 serve 配置都开了优先级调度）",
    )


class CallbackPolicy(_Strict):
    """回调 backend B 的超时与重试策略（tenacity 据此构造）。"""

    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    attempt_deadline_s: float = Field(
        40.0,
        gt=0,
        description="一次投递尝试（连接、发送、收到响应头）的总时限；httpx 的超时按每次读算，"
        "一点点吐响应头的接收方能拖过它们，这个时限拖不过",
    )
    max_concurrent_per_host: int = Field(
        64,
        ge=1,
        description="每个回调副本对同一主机同时在投的回调上限；满了的等一个尝试时限，"
        "仍满就这一轮算未送达（按重投表再投），慢的 backend 占不满全部名额",
    )
    max_attempts: int = Field(6, ge=1, le=50)
    initial_backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)
    jitter_s: float = Field(1.0, ge=0, description="每次等待额外加的随机抖动上限")
    honour_retry_after: bool = True
    max_retry_after_s: float = Field(300.0, ge=0, description="Retry-After 的上限")

    @property
    def round_bound_s(self) -> float:
        """一轮投递（含内联重试）最长多久：等主机名额一个尝试时限，每次尝试一个时限，每次重试前
        最长的等待（退避或 Retry-After 的上限，加抖动）。等这一轮结果的调用以它定超时。"""
        longest_wait = max(
            self.max_backoff_s, self.max_retry_after_s if self.honour_retry_after else 0.0
        )
        return (self.max_attempts + 1) * self.attempt_deadline_s + (self.max_attempts - 1) * (
            longest_wait + self.jitter_s
        )

    @model_validator(mode="after")
    def _check_backoff(self) -> CallbackPolicy:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s 不能小于 initial_backoff_s")
        return self


class JobPolicy(_Strict):
    """作业的持久化、租约、恢复、重投与限流。"""

    ledger_path: Path = Field(
        Path(".run/ledger.sqlite3"),
        description="SQLite 账本文件（相对路径按仓库根解析）；compose 里放在 /data 卷上",
    )
    ledger_url: SecretStr | None = Field(
        None,
        description="Postgres 账本（postgresql://用户:密码@主机:5432/库）；设了就不用 SQLite 文件，"
        "每个入口副本经自己的连接池直连数据库",
    )
    ledger_pool_size: int = Field(
        10, ge=1, le=200, description="每个入口副本到 Postgres 账本的最大连接数"
    )
    lease_s: float = Field(30.0, gt=0, description="作业租约：持有者失联这么久后由别的副本接手")
    heartbeat_s: float = Field(10.0, gt=0, description="续租间隔（须小于 lease_s 的一半）")
    sweep_interval_s: float = Field(5.0, gt=0, description="扫描到期租约与待重投回调的间隔")
    max_runs: int = Field(3, ge=1, le=20, description="一个作业最多被执行几次（含恢复）")
    max_concurrent_per_replica: int = Field(
        256, ge=1, description="每个入口副本同时执行的作业数；多出的在副本内排队"
    )
    max_active_jobs: int = Field(
        1000, ge=1, description="全局未完成（待生成）的作业上限；超过时 POST 返回 429"
    )
    max_active_per_caller: int | None = Field(
        None,
        ge=1,
        description="每个调用方未完成作业的上限（一个调用方占不满全部名额）；"
        "不设时按 max_active_jobs ÷ 配置的调用方个数",
    )
    default_deadline_s: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="请求没给 deadline_s 时的期限（秒）；不设则这样的作业没有期限",
    )
    high_priority_callers: tuple[str, ...] = Field(
        ("*",),
        description="可以提交 priority=high 的调用方（API key 标的调用方名）；* 为所有调用方。"
        "其他调用方提交 high 得到 403（不悄悄降级：调用方要知道它的加急没有生效）",
    )
    queue_order: Literal["priority", "fifo"] = Field(
        "priority",
        description="副本内作业队列的次序：priority（按优先级、调用方之间轮转）"
        "或 fifo（先来先服务，对照用）",
    )
    caller_weights: dict[str, Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=dict,
        description="同一优先级里各调用方轮转的权重（每轮放行几个；缺省 1）",
    )
    priority_aging_s: float = Field(
        60.0,
        gt=0,
        description="排队每满这么久升一级（low → normal → high），低优先级不会被永远饿着",
    )
    drain_timeout_s: float = Field(
        90.0, ge=0, description="副本关闭时等待在途作业的时长；之后交还租约给其他副本"
    )
    idempotency_ttl_s: float = Field(24 * 3600.0, gt=0, description="Idempotency-Key 有效期")
    redelivery_schedule_s: tuple[float, ...] = Field(
        (60.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0),
        min_length=1,
        description="内联重试用尽后的持久化重投间隔（最后一项重复使用）",
    )
    redelivery_horizon_s: float = Field(
        24 * 3600.0, gt=0, description="从首次投递失败起，超过这么久仍未送达即标记 undelivered"
    )
    ledger_call_timeout_s: float = Field(10.0, gt=0, description="单次账本调用的超时")
    retention_days: float = Field(
        7.0, gt=0, description="已结束的作业（终态且回调已送达或已放弃）保留的天数，之后清除"
    )
    purge_interval_s: float = Field(60.0, gt=0, description="清除过期作业的间隔（不在请求路径上）")
    purge_batch: int = Field(500, ge=1, le=10_000, description="每次清除最多删几个作业（小批）")

    @field_validator("ledger_url")
    @classmethod
    def _check_ledger_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError(
                "jobs.ledger_url 须是 postgresql://用户:密码@主机:端口/库"
                "（SQLite 账本用 jobs.ledger_path）"
            )
        return value

    @model_validator(mode="after")
    def _check_lease(self) -> JobPolicy:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("jobs.heartbeat_s 必须不大于 jobs.lease_s 的一半，否则租约会误过期")
        if any(step <= 0 for step in self.redelivery_schedule_s):
            raise ValueError("jobs.redelivery_schedule_s 的每一项都必须大于 0")
        if self.retention_days * 86400 <= self.idempotency_ttl_s:
            raise ValueError(
                "jobs.retention_days 必须长于 jobs.idempotency_ttl_s：幂等重放要能读到原来的作业"
            )
        return self


# 只写 key（不带调用方）的都属于这个调用方；不鉴权时所有请求也算它
DEFAULT_CALLER = "default"
_CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class CallerKey:
    """一把 key：属于哪个调用方、是不是管理员 key。"""

    caller: str
    key: str
    admin: bool = False


def split_caller_key(entry: str) -> tuple[str, str]:
    """`调用方:key` → (调用方, key)；只有 key 时调用方为 default。调用方名不合法抛 ValueError。"""
    caller, sep, key = entry.partition(":")
    if not sep:
        return DEFAULT_CALLER, entry
    if not _CALLER_NAME.fullmatch(caller) or not key:
        raise ValueError(
            "API key 写成 调用方:key 时，调用方名只能是字母、数字、_ . -（至多 64 个），"
            "key 不能为空（key 本身不要含冒号）"
        )
    return caller, key


# 同时生效的回调签名密钥最多几把：每把都要对每个回调签一次
MAX_SIGNING_SECRETS = 5


def check_signing_secrets(secrets: tuple[str, ...]) -> None:
    """签名密钥的格式与把数；错误信息只说第几把不对，不带密钥本身。"""
    if len(secrets) > MAX_SIGNING_SECRETS:
        raise ValueError(
            f"CALLBACK_SIGNING_SECRET 最多 {MAX_SIGNING_SECRETS} 把"
            f"（现在 {len(secrets)} 把）：轮换完就去掉旧的"
        )
    for index, secret in enumerate(secrets, start=1):
        if not secret.startswith("whsec_"):
            raise ValueError(
                f"CALLBACK_SIGNING_SECRET 的第 {index} 把不是 Standard Webhooks 密钥"
                "（须 whsec_ 开头；多把用逗号分隔，新的在前）"
            )


def check_api_keys(entries: tuple[str, ...]) -> None:
    """每把 key 的 调用方:key 写法都合法（错误信息不带 key）。"""
    for entry in entries:
        split_caller_key(entry)


class Settings(BaseSettings):
    """整个应用的配置。

    来源优先级：serve_config.yaml 的 `args` > 环境变量（前缀 `REPORTS_`，
    嵌套用 `__`）> `.env` > 默认值。
    """

    model_config = SettingsConfigDict(
        env_prefix="REPORTS_",
        env_nested_delimiter="__",
        # 绝对路径：副本进程的当前目录不一定是仓库根
        env_file=PROJECT_ROOT / ".env",
        # .env 里留空的变量视为未设置（.env.example 的空行可以原样复制）
        env_ignore_empty=True,
        # .env 同时给 docker compose 用，含非本应用的变量：这里忽略；
        # serve_config 的 args 里写错的键由 from_args() 拒绝，嵌套模型本身也禁止未知字段
        extra="ignore",
        frozen=True,
    )

    llm_mode: LLMMode = LLMMode.SERVE_LLM
    engine: EngineSettings = EngineSettings()
    external: ExternalLLMSettings = ExternalLLMSettings()
    vllm_api_url: AnyHttpUrl | None = Field(
        None,
        validation_alias=AliasChoices("VLLM_API_URL", "vllm_api_url"),
        description="外部模式的 base URL 简写；设置后覆盖 external.base_url",
    )
    llm: LLMCallPolicy = LLMCallPolicy()
    callback: CallbackPolicy = CallbackPolicy()
    jobs: JobPolicy = JobPolicy()
    templates_path: Path = Path("prompts/templates.yaml")
    default_callback_url: AnyHttpUrl | None = Field(
        None, description="请求未带 callback_url 时使用"
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="请求体上限（字节）")
    handle_transport: HandleTransport = Field(
        HandleTransport.GRPC,
        description="入口 → 渲染 / 回调 / 账本的句柄走哪条路：grpc（默认，省 CPU；副本的内部 gRPC "
        "端口随机，跨主机时主机之间要放行）或 actor（Ray actor 调用，走固定的 worker 端口段）。"
        "入口 → LLMServer 始终是 actor 调用",
    )

    # ---- 安全 ----
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="/v1/* 接受的 Bearer key（环境变量 REPORTS_API_KEYS，逗号分隔）；"
        "写成 调用方:key 时给 key 标上调用方（同名的几把 key 是同一调用方的轮换），"
        "只写 key 的都属于调用方 default",
    )
    api_keys_file: Path | None = Field(
        None,
        description="从文件读 /v1/* 的 key（REPORTS_API_KEYS_FILE；格式同 REPORTS_API_KEYS，"
        "逗号或换行分隔）。文件改了，各副本几秒内换上，不必重启："
        "轮换时先加新 key、调用方换完再删旧的。与 REPORTS_API_KEYS 只能设一个",
    )
    admin_api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="管理员 key（REPORTS_ADMIN_API_KEYS，格式同上）：可看全部作业与运维接口",
    )
    auth_disabled: bool = Field(
        False, description="显式关闭鉴权（REPORTS_AUTH_DISABLED=true）；auth_required 时才需要"
    )
    auth_required: bool = Field(
        True, description="没有 key 时拒绝启动（compose 剖面）；本机 CPU 剖面设为 false"
    )
    callback_signing_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        validation_alias=AliasChoices(
            "CALLBACK_SIGNING_SECRET", "callback_signing_secret", "callback_signing_secrets"
        ),
        description="Standard Webhooks 密钥（whsec_…），逗号分隔，新的在前；"
        "设置后每个回调都带签名，有几把就签几个（webhook-signature 里空格分隔），"
        "接收方用其中任何一把都验得过——轮换时先加新的、等接收方换完再去掉旧的",
    )
    callback_signing_secret_file: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            "CALLBACK_SIGNING_SECRET_FILE", "callback_signing_secret_file"
        ),
        description="从文件读回调签名密钥（格式同 CALLBACK_SIGNING_SECRET，逗号或换行分隔，"
        "新的在前）。文件改了，回调副本几秒内换上，不必重启。与 CALLBACK_SIGNING_SECRET 只能设一个",
    )
    secret_reload_s: float = Field(
        2.0, gt=0, le=300, description="密钥文件多久看一次有没有改（秒）"
    )
    callback_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        validation_alias=AliasChoices("CALLBACK_ALLOWED_HOSTS", "callback_allowed_hosts"),
        description="回调地址白名单：精确主机名或 *.后缀，可带 :端口；为空不限主机名",
    )
    callback_allow_loopback: bool = Field(False, description="允许回调到回环地址（本机剖面）")
    callback_allow_private: bool = Field(False, description="允许回调到内网地址（10.x 等）")
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json_path: Path | None = Field(
        None, description="另外写一份 JSON 行日志（便于采集与测试检查）"
    )

    @field_validator(
        "api_keys",
        "admin_api_keys",
        "callback_allowed_hosts",
        "callback_signing_secrets",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """环境变量里的逗号分隔列表 → 元组（去空白、去空项）。"""
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    def caller_keys(self) -> tuple[CallerKey, ...]:
        """全部 key 及其调用方、是否管理员（明文只在内存里用于比较）。"""
        return tuple(
            CallerKey(*split_caller_key(entry.get_secret_value()), admin=admin)
            for keys, admin in ((self.api_keys, False), (self.admin_api_keys, True))
            for entry in keys
        )

    @model_validator(mode="after")
    def _load_secret_files(self) -> Settings:
        # 密钥文件在启动时读一遍并照常校验（运行中的重读见 core/secret_files.py）
        from serve_app.core.secret_files import read_secret_file

        for file_field, list_field, env in (
            ("api_keys_file", "api_keys", "REPORTS_API_KEYS"),
            ("callback_signing_secret_file", "callback_signing_secrets", "CALLBACK_SIGNING_SECRET"),
        ):
            path: Path | None = getattr(self, file_field)
            if path is None:
                continue
            if getattr(self, list_field):
                raise ValueError(f"{env} 与 {env}_FILE 只能设一个")
            try:
                values = read_secret_file(path)
            except OSError as exc:
                raise ValueError(f"{env}_FILE 读不了：{path}（{exc.strerror}）") from None
            object.__setattr__(self, list_field, tuple(SecretStr(v) for v in values))
        return self

    @model_validator(mode="after")
    def _check_signing_secrets(self) -> Settings:
        # 在模型层检查：字段层的错误会把原始输入（密钥本身）带进错误信息；这里只说第几把不对
        check_signing_secrets(tuple(s.get_secret_value() for s in self.callback_signing_secrets))
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        # 在模型层检查调用方名：字段层的错误会把原始输入（含 key）带进错误信息
        callers = {entry.caller for entry in self.caller_keys() if not entry.admin}
        if self.jobs.max_active_per_caller is None and len(callers) > 1:
            # 每个调用方一份：这里解析一次，账本拿到的就是具体的数
            share = max(1, self.jobs.max_active_jobs // len(callers))
            resolved = self.jobs.model_copy(update={"max_active_per_caller": share})
            object.__setattr__(self, "jobs", resolved)
        if (
            self.auth_required
            and not self.api_keys
            and not self.admin_api_keys
            and not self.auth_disabled
        ):
            raise ValueError(
                "未配置 API key：设置 REPORTS_API_KEYS（逗号分隔），"
                "或明确接受不鉴权：REPORTS_AUTH_DISABLED=true"
            )
        return self

    @model_validator(mode="after")
    def _check_mode(self) -> Settings:
        if self.llm_mode is LLMMode.SERVE_LLM and not self.engine.model_source:
            raise ValueError(
                "llm_mode=serve_llm 需要 engine.model_source"
                "（环境变量 REPORTS_ENGINE__MODEL_SOURCE）"
            )
        return self

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Settings:
        """由 serve_config.yaml 的 args 构造；未知的键、与环境变量冲突的值直接报错（部署失败）。"""
        known = set(cls.model_fields)
        for field in cls.model_fields.values():
            if isinstance(field.validation_alias, AliasChoices):
                known |= {c for c in field.validation_alias.choices if isinstance(c, str)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"serve_config 的 args 有未知字段 {unknown}，可用：{sorted(known)}")
        conflicts = find_conflicts(cls, args, environment(PROJECT_ROOT / ".env"))
        if conflicts:
            raise ValueError(
                "同一设置在两处给了不同的值（只在一处设置：删掉其中一处）：" + "；".join(conflicts)
            )
        return cls(**args)

    @property
    def external_base_url(self) -> str:
        """外部模式实际使用的 base URL。"""
        return str(self.vllm_api_url or self.external.base_url)

    @property
    def resolved_ledger_path(self) -> Path:
        """账本文件的绝对路径（相对路径按仓库根目录解析）。"""
        return _from_root(self.jobs.ledger_path)

    @property
    def resolved_templates_path(self) -> Path:
        """模板文件的绝对路径（相对路径按仓库根目录解析）。"""
        return _from_root(self.templates_path)
