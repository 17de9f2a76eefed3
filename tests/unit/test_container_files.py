"""容器文件：hadolint 与 compose schema 校验通过，且 compose 的语义符合运维约定。"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

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


@pytest.mark.parametrize("service", ["ray-head", "reports-external"])
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
    compose_text = COMPOSE.read_text(encoding="utf-8")
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


def test_readme_per_gpu_services_get_distinct_devices() -> None:
    # README“加 GPU”里一卡一容器的写法：每个服务一张不同的卡，且都用 gpu-worker 的启动方式
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### 加 GPU") :]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert block, "README“加 GPU”缺少一卡一容器的 compose 片段"
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
