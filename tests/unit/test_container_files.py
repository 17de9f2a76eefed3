"""容器文件：hadolint 与 compose schema 校验通过，且 compose 的语义符合运维约定。"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.core.settings import PROJECT_ROOT

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
    assert head["environment"]["SERVE_CONFIG"] == "serve_config.yaml"
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
