"""容器文件：hadolint 与 compose schema 校验通过，且 compose 的语义符合运维约定。"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import ports
from cluster.ports import PORT_BLOCK, free_port_block, release_port_block
from serve_app.core.settings import PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "cluster" / "Dockerfile"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
BIN = Path(sys.executable).parent


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"缺少 {name}（开发依赖，make install 会装上）"
    return found


def test_dockerfile_passes_hadolint_without_warnings() -> None:
    result = subprocess.run(
        [_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_compose_matches_the_compose_spec() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_healthchecks() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = [line.split()[-1] for line in text.splitlines() if line.startswith("FROM ")]
    assert {"builder", "runtime", "head", "gpu-worker"} <= set(stages)
    assert "uv sync --frozen" in text and "--no-dev" in text
    runtime = text[text.index("AS runtime") :]
    assert "uv" not in runtime.split("COPY --from=builder")[0]  # 运行阶段不装构建工具
    assert "USER 1000:1000" in runtime
    assert text.count("HEALTHCHECK") == 2


def test_gpu_worker_reserves_a_gpu_and_waits_for_the_head() -> None:
    worker = _compose()["services"]["ray-gpu-worker"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # 一台主机一个 worker，带上全部 GPU：count: 1 加 --scale 会让每个容器都拿到同一张卡
    assert device["count"] == "all" and "device_ids" not in device
    assert worker["depends_on"]["ray-head"]["condition"] in {"service_started", "service_healthy"}
    assert worker["command"] == ["cluster/start_worker.sh"]
    assert worker["environment"]["RAY_HEAD_ADDRESS"] == "ray-head:6379"
    assert "reports_llm" in worker["environment"]["RAY_WORKER_RESOURCES"]
    assert worker["build"]["target"] == "gpu-worker" and worker["build"]["args"]["EXTRA"] == "gpu"


def test_head_publishes_ports_and_deploys_serve_config() -> None:
    head = _compose()["services"]["ray-head"]
    published = {str(port).rsplit(":", 1)[-1] for port in head["ports"]}
    assert {"8000", "8265"} <= published
    assert head["command"] == ["cluster/head_entrypoint.sh"]
    assert head["environment"]["SERVE_CONFIG"] == "${SERVE_CONFIG:-serve_config.yaml}"
    # 配置从宿主机挂进来：改了文件后 deploy.sh 就地生效，不用重建镜像
    assert "./serve_config.yaml:/app/serve_config.yaml:ro" in head["volumes"]
    assert "./presets:/app/presets:ro" in head["volumes"]
    assert "COPY presets ./presets" in DOCKERFILE.read_text(encoding="utf-8")
    assert "/readyz" in " ".join(head["healthcheck"]["test"])
    entrypoint = (PROJECT_ROOT / "cluster" / "head_entrypoint.sh").read_text(encoding="utf-8")
    assert "start_head.sh" in entrypoint and "deploy.sh" in entrypoint
    deploy = (PROJECT_ROOT / "cluster" / "deploy.sh").read_text(encoding="utf-8")
    assert "CONFIG=${SERVE_CONFIG:-serve_config.yaml}" in deploy and "serve deploy" in deploy


@pytest.mark.parametrize(
    "service", ["ray-head", "ray-gpu-worker", "vllm-service", "reports-external"]
)
def test_every_service_uses_env_file_and_the_one_network(service: str) -> None:
    compose = _compose()
    assert list(compose["networks"]) == ["reports"]
    spec = compose["services"][service]
    assert spec["networks"] == ["reports"]
    assert [entry["path"] for entry in spec["env_file"]] == [".env"]


def test_volumes_keep_models_and_data() -> None:
    compose = _compose()
    assert {"model-cache", "reports-data"} <= set(compose["volumes"])
    head_volumes = compose["services"]["ray-head"]["volumes"]
    assert any(v.startswith("reports-data:") for v in head_volumes)


def test_external_profile_is_the_two_container_layout() -> None:
    services = _compose()["services"]
    vllm, app = services["vllm-service"], services["reports-external"]
    assert vllm["profiles"] == ["external"] and app["profiles"] == ["external"]
    assert "devices" in vllm["deploy"]["resources"]["reservations"]
    assert app["environment"]["VLLM_API_URL"] == "${VLLM_API_URL:-http://vllm-service:8000/v1}"
    assert app["environment"]["SERVE_CONFIG"] == "serve_config.external.yaml"
    assert app["depends_on"]["vllm-service"]["condition"] == "service_healthy"
    assert "--port" in vllm["command"] and "8000" in vllm["command"]


def test_env_example_documents_cluster_variables() -> None:
    text = (PROJECT_ROOT / ".env.example").read_text(encoding="utf-8")
    for name in (
        "RAY_AUTH_TOKEN=",
        "COMPOSE_PROFILES=",
        "REPORTS_ENGINE__MODEL_SOURCE=",
        "VLLM_API_URL=",
    ):
        assert name in text


def test_cluster_profile_keeps_jobs_in_the_postgres_service() -> None:
    services = _compose()["services"]
    head, postgres = services["ray-head"], services["postgres"]
    url = head["environment"]["REPORTS_JOBS__LEDGER_URL"]
    # .env 里的托管库优先；默认是 compose 里的 postgres 服务，密码必须给出
    assert url.startswith("${REPORTS_JOBS__LEDGER_URL:-postgresql://reports:${POSTGRES_PASSWORD:?")
    assert url.endswith("@postgres:5432/reports}")
    assert head["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert postgres["profiles"] == ["cluster"]
    assert re.fullmatch(r"postgres:\d+\.\d+", postgres["image"])  # 官方镜像，钉住版本
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    # 端口默认只发布到本机回环
    assert postgres["ports"] == ["${POSTGRES_PUBLISH:-127.0.0.1:5432}:5432"]
    # 跨主机（head 用主机网络）时经本机回环连它
    multihost = _load_compose(MULTIHOST)["services"]["ray-head"]["environment"]
    assert multihost["REPORTS_JOBS__LEDGER_URL"].endswith("@127.0.0.1:5432/reports}")


@pytest.mark.parametrize("service", ["reports-external"])
def test_ledger_lives_on_the_data_volume_of_the_head(service: str) -> None:
    spec = _compose()["services"][service]
    assert "reports-data:/data" in spec["volumes"]
    assert spec["environment"]["REPORTS_JOBS__LEDGER_PATH"].startswith("/data/")
    assert "reports_ledger" in spec["environment"]["RAY_HEAD_RESOURCES"]


def test_gpu_worker_has_a_c_compiler_for_triton() -> None:
    # Triton 在 GPU 上第一次编译内核时要 gcc/clang：gpu-worker 镜像必须带 C 编译器
    text = DOCKERFILE.read_text(encoding="utf-8")
    gpu_stage = text[text.index("AS gpu-worker") :]
    installs = [line for line in gpu_stage.splitlines() if "apt-get install" in line]
    assert installs and "gcc" in installs[0] and "libc6-dev" in installs[0]
    assert gpu_stage.rstrip().splitlines()[-1].startswith("CMD")
    assert "USER 1000:1000" in gpu_stage  # 装完切回非 root


def test_external_profile_takes_vllm_api_url_from_env() -> None:
    env = _compose()["services"]["reports-external"]["environment"]
    assert env["VLLM_API_URL"].startswith("${VLLM_API_URL:-")


def test_env_example_lists_every_required_compose_variable_and_hf_token() -> None:
    compose_text = "".join(
        path.read_text(encoding="utf-8") for path in (COMPOSE, MULTIHOST, REMOTE_WORKER)
    )
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", compose_text))
    listed = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), flags=re.M))
    assert required and required <= listed, required - listed
    assert "HF_TOKEN" in listed  # 受限模型的下载凭据


def _env_example_groups() -> dict[str, set[str]]:
    """.env.example 的分组（`# ==== 名字 ====`）→ 组里的变量名。"""
    groups: dict[str, set[str]] = {}
    current = ""
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.match(r"^# ==== (.+?) ?====$", line)
        if header:
            current = header.group(1)
            groups[current] = set()
        elif match := re.match(r"^([A-Z0-9_]+)=", line):
            assert current, f"{match.group(1)} 不在任何分组里"
            groups[current].add(match.group(1))
    return groups


def _marked_required() -> set[str]:
    """注释里标了【必填】的变量（标记在变量前的注释行里）。"""
    marked: set[str] = set()
    pending = False
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            pending = pending or "【必填】" in line
        elif match := re.match(r"^([A-Z0-9_]+)=", line):
            if pending:
                marked.add(match.group(1))
            pending = False
    return marked


_APP_VARIABLES = re.compile(r"\b(REPORTS_[A-Z0-9_]+|VLLM_API_URL|CALLBACK_[A-Z_]+)\b")


@pytest.mark.parametrize(
    ("config", "profile", "expected"),
    [
        ("serve_config.yaml", "cluster", {"REPORTS_API_KEYS", "REPORTS_ENGINE__MODEL_SOURCE"}),
        ("serve_config.external.yaml", "external", {"REPORTS_API_KEYS"}),
    ],
)
def test_every_setting_a_profile_requires_at_startup_is_in_its_env_example_group(
    config: str, profile: str, expected: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 从空环境起：启动失败时错误说出缺哪个变量，补上它再试，直到能启动
    for name in list(os.environ):
        if _APP_VARIABLES.fullmatch(name):
            monkeypatch.delenv(name)
    groups = _env_example_groups()
    [common] = [g for g in groups if g.startswith("所有 compose 剖面")]
    [own] = [g for g in groups if g.startswith(f"{profile} 剖面")]
    allowed = groups[common] | groups[own]
    [app] = yaml.safe_load((PROJECT_ROOT / config).read_text(encoding="utf-8"))["applications"]
    required: set[str] = set()
    for _ in range(10):
        try:
            Settings.from_args(app["args"])
            break
        except ValueError as exc:
            named = [n for n in _APP_VARIABLES.findall(str(exc)) if n not in required]
            assert named, f"启动失败却没说该设置哪个变量：{exc}"
            required.add(named[0])
            monkeypatch.setenv(named[0], "k-1" if named[0].endswith("KEYS") else "/models/m")
    else:
        pytest.fail(f"补了 {required} 仍无法启动")
    assert required == expected
    assert required <= allowed, f"{required - allowed} 不在 .env.example 的 {common} / {own} 组"
    assert required <= _marked_required(), "必填的变量在 .env.example 里要标【必填】"


def test_documented_per_gpu_services_get_distinct_devices() -> None:
    # docs/operations.md“加 GPU”里一卡一容器的写法：每个服务一张不同的卡，
    # 且都用 gpu-worker 的启动方式
    guide = (PROJECT_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = guide[guide.index("### 加 GPU") :]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert block, "docs/operations.md“加 GPU”缺少一卡一容器的 compose 片段"
    services: dict[str, Any] = yaml.safe_load(block.group(1))["services"]
    # 原来带全部卡的 worker 不再启动，否则它与每卡一个的服务抢同样的卡
    assert services.pop("ray-gpu-worker")["profiles"] == ["disabled"]
    assert len(services) >= 2
    seen: list[str] = []
    for spec in services.values():
        [device] = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "count" not in device
        seen += device["device_ids"]
        assert spec["extends"]["service"] == "ray-gpu-worker"
    assert len(seen) == len(set(seen)), f"两个服务拿到了同一张卡：{seen}"


class _ComposeLoader(yaml.SafeLoader):
    """认得 compose 的 `!reset`（覆盖文件里“去掉基础文件的这一项”）的 YAML 读取器。"""


class _Reset:
    """`!reset` 标记：合并时删掉这个键。"""


def _construct_reset(_loader: yaml.SafeLoader, _node: yaml.Node) -> _Reset:
    return _Reset()


_ComposeLoader.add_constructor("!reset", _construct_reset)


def _load_compose(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)
    return data


def _merge(base: Any, override: Any) -> Any:
    """compose 的合并规则（这里用到的部分）：映射逐键合并，`!reset` 删键，其余以覆盖为准。"""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                merged.pop(key, None)
            else:
                merged[key] = _merge(base.get(key), value)
        return merged
    return override


def _strip_resets(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _strip_resets(v) for k, v in data.items() if not isinstance(v, _Reset)}
    return data


def _default(expression: str) -> str:
    """`${NAME:-默认}` 的默认值。"""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-(.+)\}", expression)
    assert match, expression
    return match.group(1)


MULTIHOST = PROJECT_ROOT / "compose.multihost.yml"
REMOTE_WORKER = PROJECT_ROOT / "compose.remote-worker.yml"


@pytest.mark.parametrize("path", [MULTIHOST, REMOTE_WORKER], ids=lambda p: p.name)
def test_cross_host_compose_files_match_the_compose_spec(path: Path, tmp_path: Path) -> None:
    # check-jsonschema 不认识 !reset：去掉这些标记后按 compose 规范校验
    plain = tmp_path / f"{path.stem}.json"
    plain.write_text(json.dumps(_strip_resets(_load_compose(path))), encoding="utf-8")
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(plain)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multihost_override_puts_both_ray_nodes_on_the_host_network_with_fixed_ports() -> None:
    merged = _merge(_compose(), _load_compose(MULTIHOST))["services"]
    head, worker = merged["ray-head"], merged["ray-gpu-worker"]
    for spec in (head, worker):
        assert spec["network_mode"] == "host"
        assert "networks" not in spec and "ports" not in spec  # 主机网络下两者都不能有
        assert spec["environment"]["RAY_NODE_IP"].startswith("${RAY_NODE_IP:?")
    # 同一台主机上的两个节点：端口段不重叠（每段 1000 个端口）
    head_base = int(_default(head["environment"]["RAY_PORT_BASE"]))
    worker_base = int(_default(worker["environment"]["RAY_PORT_BASE"]))
    assert abs(head_base - worker_base) >= 1000
    # 本机 worker 经内网地址连 head（不再有 ray-head 这个 bridge 网络里的名字）
    assert worker["environment"]["RAY_HEAD_ADDRESS"] == "${RAY_NODE_IP}:6379"
    # dashboard 默认仍只绑本机回环
    assert _default(head["environment"]["RAY_DASHBOARD_HOST"]) == "127.0.0.1"
    # 其余（GPU、镜像、卷、健康检查）照旧来自 docker-compose.yml
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    assert "healthcheck" in head and "healthcheck" in worker


def test_remote_worker_file_is_a_whole_gpu_worker_on_the_host_network() -> None:
    remote = _load_compose(REMOTE_WORKER)["services"]["ray-gpu-worker"]
    local = _compose()["services"]["ray-gpu-worker"]
    assert remote["network_mode"] == "host" and "networks" not in remote
    assert remote["image"] == local["image"] and remote["build"] == local["build"]
    assert remote["command"] == local["command"]
    assert remote["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    env = remote["environment"]
    assert env["RAY_HEAD_ADDRESS"].startswith("${RAY_HEAD_ADDRESS:?")
    assert env["RAY_NODE_IP"].startswith("${RAY_NODE_IP:?")
    assert env["RAY_WORKER_RESOURCES"] == local["environment"]["RAY_WORKER_RESOURCES"]
    assert int(_default(env["RAY_PORT_BASE"])) >= 1024
    assert remote["healthcheck"]["test"] == local["healthcheck"]["test"]


_PORT_ARGS = "source cluster/ray_env.sh; port_args=(); ray_port_args"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("", []),
        (
            "20000",
            [
                "--node-manager-port=20000",
                "--object-manager-port=20001",
                "--runtime-env-agent-port=20002",
                "--dashboard-agent-grpc-port=20003",
                "--dashboard-agent-listen-port=20004",
                "--metrics-export-port=20005",
                "--min-worker-port=20100",
                "--max-worker-port=20999",
            ],
        ),
    ],
)
def test_ray_port_base_fixes_every_node_port(base: str, expected: list[str]) -> None:
    result = subprocess.run(
        ["bash", "-c", f"{_PORT_ARGS}; printf '%s\\n' \"${{port_args[@]}}\""],
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ["PATH"], "RAY_AUTH_TOKEN": "t", "RAY_PORT_BASE": base},
        capture_output=True,
        text=True,
        check=True,
    )
    assert [line for line in result.stdout.splitlines() if line] == expected


def _start_node_with_port_base(
    base: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """像节点启动脚本那样 source ray_env.sh 并算端口参数；能往下走时打印 started。"""
    return subprocess.run(
        ["bash", "-c", f"set -e; {_PORT_ARGS}; echo started"],
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ["PATH"], "RAY_AUTH_TOKEN": "t", "RAY_PORT_BASE": base}
        | (extra_env or {}),
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("base", ["abc", "80", "65000"])
def test_ray_port_base_out_of_range_stops_the_node_with_a_message(base: str) -> None:
    result = _start_node_with_port_base(base)
    assert result.returncode == 2 and "started" not in result.stdout
    assert "RAY_PORT_BASE" in result.stderr


@pytest.mark.parametrize("base", ["29500", "30000", "30999"])
def test_a_port_block_over_the_direct_ingress_range_is_refused(base: str) -> None:
    result = _start_node_with_port_base(base)
    assert result.returncode == 2 and "started" not in result.stdout
    assert "30000–31000" in result.stderr
    # 经典模式（Python 代理）不用这个端口段：不拒绝
    classic = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    result = _start_node_with_port_base(base, classic)
    assert result.returncode == 0 and "started" in result.stdout


def test_port_blocks_handed_out_in_one_process_never_repeat() -> None:
    # 节点刚起、还没绑端口时那段看起来仍是空的：同一进程里接连要两段，不能拿到同一段
    bases = [free_port_block() for _ in range(8)]
    try:
        assert len(set(bases)) == len(bases)
        # 不碰 Serve 直连入口的副本端口段（30000–31000）
        assert all(20000 <= b and b + PORT_BLOCK <= 30000 for b in bases)
    finally:
        for base in bases:
            release_port_block(base)


def test_released_and_stale_port_blocks_can_be_handed_out_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 20000–29999 只有 10 段：一次长的测试会话里起停几十个节点，交回的段必须能再发
    for _ in range(30):
        release_port_block(free_port_block())
    # 没交回的（节点被杀、测试中途失败）过了预留期也失效
    clock = [1000.0]
    monkeypatch.setattr(ports, "_clock", lambda: clock[0])
    for _ in range(30):
        free_port_block()
        clock[0] += ports._RESERVED_S + 1


def test_only_the_metrics_port_is_fixed_when_no_port_base_is_set() -> None:
    result = subprocess.run(
        ["bash", "-c", f"{_PORT_ARGS}; printf '%s\\n' \"${{port_args[@]}}\""],
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ["PATH"], "RAY_AUTH_TOKEN": "t", "RAY_METRICS_EXPORT_PORT": "8080"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert [line for line in result.stdout.splitlines() if line] == ["--metrics-export-port=8080"]
    # head 只在设了 RAY_PORT_BASE 时才固定 Ray Client 端口（不会算出端口 6）
    head = (PROJECT_ROOT / "cluster" / "start_head.sh").read_text(encoding="utf-8")
    assert "if [[ -n ${RAY_PORT_BASE:-} ]]; then" in head


PROMETHEUS_DIR = PROJECT_ROOT / "cluster" / "prometheus"
GRAFANA_DIR = PROJECT_ROOT / "cluster" / "grafana"


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """容器内路径 → 宿主机路径或卷名（去掉 :ro）。"""
    mounts: dict[str, str] = {}
    for entry in service["volumes"]:
        source, target, *_ = entry.split(":")
        mounts[target] = source
    return mounts


@pytest.mark.parametrize("head", ["ray-head", "reports-external"])
def test_every_head_exports_metrics_and_points_its_dashboard_at_prometheus_and_grafana(
    head: str,
) -> None:
    services = _compose()["services"]
    env = services[head]["environment"]
    assert env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090"
    assert env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    assert env["RAY_GRAFANA_IFRAME_HOST"].startswith("${GRAFANA_PUBLIC_URL")
    assert env["RAY_METRICS_EXPORT_PORT"] == "8080"
    # 会话目录在共享卷上：prometheus 读服务发现文件、grafana 读 Ray 生成的仪表盘
    assert _mounts(services[head])["/tmp/ray"] == "ray-tmp"
    assert services["ray-gpu-worker"]["environment"]["RAY_METRICS_EXPORT_PORT"] == "8080"
    for name in ("prometheus", "grafana"):
        assert set(services[name]["profiles"]) == {"cluster", "external"}
        assert _mounts(services[name])["/tmp/ray"] == "ray-tmp"


def test_prometheus_service_discovers_ray_nodes_and_loads_the_alert_rules() -> None:
    service = _compose()["services"]["prometheus"]
    assert service["image"].startswith("prom/prometheus:v")
    mounts = _mounts(service)
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert (PROJECT_ROOT / config_path).resolve() == PROMETHEUS_DIR / "prometheus.yml"
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    # 规则文件与服务发现文件都在容器里挂着的位置上
    for rule_file in config["rule_files"]:
        assert (PROJECT_ROOT / mounts[rule_file]).resolve() == PROMETHEUS_DIR / "alerts.yml"
    [job] = config["scrape_configs"]
    [files] = [sd["files"] for sd in job["file_sd_configs"]]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert "/prometheus" in mounts  # 数据在卷上
    # 只发布到本机回环（默认）
    assert service["ports"] == ["${PROMETHEUS_PUBLISH:-127.0.0.1:9090}:9090"]


def test_grafana_is_provisioned_with_prometheus_rays_and_our_dashboards() -> None:
    service = _compose()["services"]["grafana"]
    assert service["image"].startswith("grafana/grafana-oss:")
    env = service["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert env["GF_SECURITY_ALLOW_EMBEDDING"] == "true"  # Ray dashboard 嵌入面板
    mounts = _mounts(service)
    assert (PROJECT_ROOT / mounts["/etc/grafana/provisioning"]).resolve() == (
        GRAFANA_DIR / "provisioning"
    )
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text("utf-8")
    )
    [source] = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["name"] == "Prometheus"
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text("utf-8")
    )
    paths = {p["name"]: p["options"]["path"] for p in providers["providers"]}
    assert paths["ray"] == "/tmp/ray/session_latest/metrics/grafana/dashboards"
    assert (PROJECT_ROOT / mounts[paths["reports"]]).resolve() == GRAFANA_DIR / "dashboards"
    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "reports.json").read_text("utf-8"))
    [datasource_var] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource_var["current"]["value"] == source["uid"]
    # 每个面板都有查询，面板不重叠
    spots = set()
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        spot = (grid["x"], grid["y"])
        assert spot not in spots, panel["title"]
        spots.add(spot)


def test_serve_mode_defaults_in_tests_and_benchmarks_match_the_cluster_scripts() -> None:
    # 测试里 serve.run 起的集群、基准的吞吐模式，与 make run / compose 的节点用同一组 Serve 变量
    from benchmarks.overhead import SERVE_MODES
    from tests.support.cluster import SERVE_MODE_ENV

    result = subprocess.run(
        ["bash", "-c", "source cluster/ray_env.sh && env"],
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ["PATH"], "RAY_AUTH_TOKEN": "t"},
        capture_output=True,
        text=True,
        check=True,
    )
    cluster = dict(
        line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("RAY_SERVE_")
    )
    assert cluster == SERVE_MODE_ENV
    assert SERVE_MODES["throughput"].items() <= cluster.items()
