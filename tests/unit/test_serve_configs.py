"""serve_config*.yaml：Serve 的 schema、应用 args 与部署名都对得上。"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.llm import DEPLOYMENT_NAME_PREFIX, build_llm_config
from serve_app.core.settings import PROJECT_ROOT, Settings

CONFIGS = [PROJECT_ROOT / "serve_config.yaml", PROJECT_ROOT / "serve_config.cpu.yaml"]
# GPU 预设：完整的 serve_config，由 .env 的 SERVE_CONFIG 选用
PRESETS = sorted((PROJECT_ROOT / "presets").glob("serve_config.*.yaml"))
LIGHT = {"ReportIngress", "TemplateRenderer", "CallbackSender", "Ledger"}


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_a_valid_serve_deploy_schema(path: Path) -> None:
    schema = ServeDeploySchema.model_validate(_load(path))
    [app] = schema.applications
    assert app.import_path == "deployments.app:build_app"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_args_validate_and_deployment_names_exist(path: Path) -> None:
    [app] = _load(path)["applications"]
    args = dict(app["args"])
    args["engine"] = {**args["engine"], "model_source": "/models/any"}
    args["api_keys"] = "ops-key"  # compose 剖面要求 key
    settings = Settings(_env_file=None, **args)
    names = {d["name"] for d in app["deployments"]}
    assert names == LIGHT | {f"{DEPLOYMENT_NAME_PREFIX}{settings.engine.model_id}"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_llm_autoscales_on_queue_depth(path: Path) -> None:
    [app] = _load(path)["applications"]
    [llm] = [d for d in app["deployments"] if d["name"].startswith("LLMServer:")]
    scaling = llm["autoscaling_config"]
    # 没有显式值时 Ray Serve LLM 用 1e9，按排队深度的扩缩永远不会触发
    assert 0 < scaling["target_ongoing_requests"] <= llm["max_ongoing_requests"] < 10_000
    assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    assert {"upscale_delay_s", "downscale_delay_s"} <= set(scaling)
    # 不覆盖 LLMServer 的 ray_actor_options（会冲掉引擎的 runtime_env / 资源设置）
    assert "ray_actor_options" not in llm


def test_only_the_local_profile_runs_open() -> None:
    auth = {p.name: _load(p)["applications"][0]["args"].get("auth_required", True) for p in CONFIGS}
    assert auth == {"serve_config.yaml": True, "serve_config.cpu.yaml": False}
    external = _load(PROJECT_ROOT / "serve_config.external.yaml")["applications"][0]["args"]
    assert external["auth_required"] is True
    with pytest.raises(ValueError, match="REPORTS_API_KEYS"):
        Settings(_env_file=None, **external)


def test_gpu_profile_puts_engine_on_gpu_and_cpu_profile_on_cpu() -> None:
    [gpu], [cpu] = (_load(p)["applications"] for p in CONFIGS)
    assert gpu["args"]["engine"]["accelerator"] == "gpu"
    assert cpu["args"]["engine"]["accelerator"] == "cpu"
    assert cpu["args"]["engine"]["engine_kwargs"]["enforce_eager"] is True
    for app in (gpu, cpu):
        for deployment in app["deployments"]:
            if deployment["name"] in LIGHT:
                assert deployment["ray_actor_options"]["num_cpus"] < 1


@pytest.mark.parametrize(
    "path", [*CONFIGS, PROJECT_ROOT / "serve_config.external.yaml", *PRESETS], ids=lambda p: p.name
)
def test_ledger_is_a_single_replica_on_the_node_with_the_volume(path: Path) -> None:
    [app] = _load(path)["applications"]
    [ledger] = [d for d in app["deployments"] if d["name"] == "Ledger"]
    assert ledger["num_replicas"] == 1 and "autoscaling_config" not in ledger
    assert "reports_ledger" in ledger["ray_actor_options"]["resources"]
    [ingress] = [d for d in app["deployments"] if d["name"] == "ReportIngress"]
    settings = Settings(_env_file=None, llm_mode="external", auth_required=False)
    # 关闭窗口容得下作业的排空时间
    assert ingress["graceful_shutdown_timeout_s"] > settings.jobs.drain_timeout_s


ENGINE_KNOBS = {"max_model_len", "gpu_memory_utilization", "max_num_seqs", "enable_prefix_caching"}


def test_there_are_presets_for_one_gpu_tensor_parallel_and_quantized() -> None:
    engines = [_load(p)["applications"][0]["args"]["engine"] for p in PRESETS]
    kwargs = [e["engine_kwargs"] for e in engines]
    assert any(k["tensor_parallel_size"] == 1 and "quantization" not in k for k in kwargs)
    assert any(k["tensor_parallel_size"] == 2 for k in kwargs)
    assert any(str(k.get("quantization", "")).startswith("awq") for k in kwargs)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_is_complete_and_valid_for_serve_and_the_builder(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _load(path)
    ServeDeploySchema.model_validate(data)
    [app] = data["applications"]
    # 与 compose 剖面相同的启动条件：只给 API key，模型来自预设本身
    monkeypatch.delenv("REPORTS_ENGINE__MODEL_SOURCE", raising=False)
    monkeypatch.setenv("REPORTS_API_KEYS", "ops-key")
    settings = Settings.from_args(app["args"])
    engine = settings.engine
    assert engine.accelerator == "gpu" and "/" in engine.model_source
    assert ENGINE_KNOBS <= set(engine.engine_kwargs)
    # 构建器的 schema：Ray Serve LLM 的 LLMConfig 接受这些参数
    config = build_llm_config(engine)
    assert (
        config.engine_kwargs["tensor_parallel_size"] == engine.engine_kwargs["tensor_parallel_size"]
    )
    names = {d["name"] for d in app["deployments"]}
    assert names == LIGHT | {f"{DEPLOYMENT_NAME_PREFIX}{engine.model_id}"}
    [llm] = [d for d in app["deployments"] if d["name"].startswith("LLMServer:")]
    scaling = llm["autoscaling_config"]
    assert scaling["target_ongoing_requests"] <= engine.engine_kwargs["max_num_seqs"]
    assert llm["max_ongoing_requests"] >= engine.engine_kwargs["max_num_seqs"]
    # 文件头写明容量估算（运维据此选卡与调参）
    assert "容量估算" in path.read_text(encoding="utf-8")


AUTOSCALED_LIGHT = ("ReportIngress", "TemplateRenderer", "CallbackSender")
AUTOSCALING_KNOBS = {
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
}


@pytest.mark.parametrize(
    "path", [*CONFIGS, PROJECT_ROOT / "serve_config.external.yaml", *PRESETS], ids=lambda p: p.name
)
def test_light_deployments_autoscale_with_every_knob_explained(path: Path) -> None:
    schema = ServeDeploySchema.model_validate(_load(path))
    [app] = schema.applications
    by_name = {d.name: d for d in app.deployments}
    text = path.read_text(encoding="utf-8")
    for name in AUTOSCALED_LIGHT:
        deployment = by_name[name]
        # 手写的 num_replicas 与 autoscaling_config 不能同时出现（Serve 拒绝）
        assert "num_replicas" not in deployment.model_fields_set, name
        config = deployment.autoscaling_config
        assert isinstance(config, dict) and AUTOSCALING_KNOBS <= set(config), name
        assert 1 <= config["min_replicas"] <= config["max_replicas"], name
        # 块的开头有一行注释说明这个部署按什么扩缩
        block = text[text.index(f"- name: {name}") :]
        assert re.search(r"autoscaling_config:\s+#\s*\S", block.split("- name:", 2)[1]), name


@pytest.mark.parametrize("path", [*CONFIGS, *PRESETS], ids=lambda p: p.name)
def test_every_in_cluster_engine_schedules_by_priority(path: Path) -> None:
    """作业的 priority 发到引擎（high 为 -1、low 为 1）：没开优先级调度的 vLLM 会对它们答 400。"""
    engine = _load(path)["applications"][0]["args"]["engine"]
    assert engine["engine_kwargs"]["scheduling_policy"] == "priority"


def test_one_gpu_preset_scales_the_llm_to_zero_with_a_delay_fitting_its_load_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """缩到零的预设：部署时先起一个副本（模型能否加载部署时就知道），空闲的缩容延迟不短于
    等冷启动的上限（不在批与批之间反复加载）。"""
    monkeypatch.setenv("REPORTS_API_KEYS", "ops-key")
    zero = []
    for path in PRESETS:
        [app] = _load(path)["applications"]
        [llm] = [d for d in app["deployments"] if d["name"].startswith("LLMServer:")]
        scaling = llm["autoscaling_config"]
        if scaling["min_replicas"] == 0:
            zero.append(path.name)
            assert scaling["initial_replicas"] >= 1
            limit = Settings.from_args(app["args"]).llm.cold_start_timeout_s
            assert scaling["downscale_delay_s"] >= limit >= 300
    assert zero, "至少一个 GPU 预设用 min_replicas: 0"
