"""配置模型与回调载荷模型。"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from serve_app.core.config_conflicts import find_conflicts
from serve_app.core.errors import (
    INTERNAL_ERROR_MESSAGE,
    ErrorCode,
    LLMTimeout,
    Overloaded,
    RenderError,
    error_info,
)
from serve_app.core.settings import PROJECT_ROOT, CallbackPolicy, LLMMode, Settings
from serve_app.models.reports import CallbackPayload, Completion, ReportJob, Usage
from tests.support.sample import make_settings

_JOB = ReportJob(
    trace_id="t",
    report_type="sales_weekly",
    inputs={"period": "W47"},
    length="short",
    callback_url="http://127.0.0.1/hook",
    metadata={"order": 42},
    created_at=datetime(2026, 11, 25, tzinfo=UTC),
)


@pytest.fixture(autouse=True)
def _auth_explicitly_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """这些测试关注别的字段：显式关闭鉴权要求（鉴权规则另有测试）。"""
    monkeypatch.setenv("REPORTS_AUTH_DISABLED", "true")


def test_auth_is_required_unless_keys_or_explicit_opt_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REPORTS_AUTH_DISABLED")
    with pytest.raises(ValidationError, match="REPORTS_API_KEYS"):
        Settings(_env_file=None, engine={"model_source": "/m"})
    monkeypatch.setenv("REPORTS_API_KEYS", " key-one , key-two ,")
    settings = Settings(_env_file=None, engine={"model_source": "/m"})
    assert [k.get_secret_value() for k in settings.api_keys] == ["key-one", "key-two"]
    assert "key-one" not in repr(settings) and "key-one" not in str(settings.model_dump())
    monkeypatch.delenv("REPORTS_API_KEYS")
    monkeypatch.setenv("REPORTS_AUTH_DISABLED", "true")
    assert Settings(_env_file=None, engine={"model_source": "/m"}).api_keys == ()


def test_signing_secret_and_allowed_hosts_from_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALLBACK_SIGNING_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    monkeypatch.setenv("CALLBACK_ALLOWED_HOSTS", "hooks.example.com, *.corp.example:8443")
    settings = Settings(_env_file=None, engine={"model_source": "/m"})
    assert settings.callback_allowed_hosts == ("hooks.example.com", "*.corp.example:8443")
    assert len(settings.callback_signing_secrets) == 1
    # 轮换：新的在前，逗号分隔
    monkeypatch.setenv(
        "CALLBACK_SIGNING_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_" + "A" * 32,
    )
    rotating = Settings(_env_file=None, engine={"model_source": "/m"})
    assert [s.get_secret_value()[:10] for s in rotating.callback_signing_secrets] == [
        "whsec_MfKQ",
        "whsec_AAAA",
    ]
    monkeypatch.setenv("CALLBACK_SIGNING_SECRET", "whsec_" + "A" * 32 + ",plain-secret")
    with pytest.raises(ValidationError, match="第 2 把.*whsec_") as info:
        Settings(_env_file=None, engine={"model_source": "/m"})
    assert "plain-secret" not in str(info.value)


def test_environment_variables_configure_nested_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPORTS_ENGINE__MODEL_SOURCE", "/models/qwen")
    monkeypatch.setenv("REPORTS_CALLBACK__MAX_ATTEMPTS", "9")
    monkeypatch.setenv("REPORTS_LLM__TIMEOUT_S", "12.5")
    settings = Settings(_env_file=None)
    assert settings.engine.model_source == "/models/qwen"
    assert settings.callback.max_attempts == 9
    assert settings.llm.timeout_s == 12.5


def test_yaml_args_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORTS_LOG_LEVEL", "DEBUG")
    settings = make_settings(log_level="WARNING")
    assert settings.log_level == "WARNING"


def test_unknown_field_fails_the_deploy() -> None:
    with pytest.raises(ValueError, match="engin"):
        Settings.from_args({"engin": {"model_source": "x"}})
    with pytest.raises(ValidationError, match="max_replica"):
        Settings.from_args({"engine": {"model_source": "x", "max_replica": 3}})


def test_dotenv_shared_with_compose_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    example = (PROJECT_ROOT / ".env.example").read_text(encoding="utf-8")
    env_file.write_text(
        example.replace(
            "REPORTS_ENGINE__MODEL_SOURCE=\n", "REPORTS_ENGINE__MODEL_SOURCE=/m\n"
        ).replace("RAY_AUTH_TOKEN=\n", "RAY_AUTH_TOKEN=abc\n"),
        encoding="utf-8",
    )
    monkeypatch.delenv("REPORTS_ENGINE__MODEL_SOURCE", raising=False)
    settings = Settings(_env_file=env_file)
    assert settings.engine.model_source == "/m"
    assert settings.callback.max_attempts == 6
    assert settings.vllm_api_url is None
    assert settings.jobs.redelivery_schedule_s == (60, 300, 1800, 7200, 18000, 36000)
    assert settings.jobs.lease_s == 30 and settings.resolved_ledger_path.name == "ledger.sqlite3"


def test_job_policy_rejects_a_heartbeat_that_would_let_leases_expire() -> None:
    with pytest.raises(ValidationError, match="heartbeat_s"):
        make_settings(jobs={"lease_s": 10, "heartbeat_s": 6})
    with pytest.raises(ValidationError, match="redelivery_schedule_s"):
        make_settings(jobs={"redelivery_schedule_s": [60, 0]})


def test_serve_llm_mode_requires_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPORTS_ENGINE__MODEL_SOURCE", raising=False)
    with pytest.raises(ValidationError, match="REPORTS_ENGINE__MODEL_SOURCE"):
        Settings(_env_file=None)


def test_external_mode_url_shorthand(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None, llm_mode=LLMMode.EXTERNAL)
    assert settings.external_base_url == "http://vllm-service:8000/v1"
    monkeypatch.setenv("VLLM_API_URL", "http://127.0.0.1:8100/v1")
    settings = Settings(_env_file=None, llm_mode=LLMMode.EXTERNAL)
    assert settings.external_base_url == "http://127.0.0.1:8100/v1"


def test_callback_policy_rejects_inverted_backoff() -> None:
    with pytest.raises(ValidationError, match="max_backoff_s"):
        CallbackPolicy(initial_backoff_s=10, max_backoff_s=1)


def test_relative_templates_path_resolves_from_repository() -> None:
    assert make_settings().resolved_templates_path.is_file()


def test_succeeded_payload_matches_contract() -> None:
    report = Completion(
        content="正文",
        model="m",
        finish_reason="stop",
        usage=Usage(prompt_tokens=5, completion_tokens=7),
    )
    body = json.loads(CallbackPayload.succeeded(_JOB, report).model_dump_json())
    assert set(body) == {
        "trace_id",
        "status",
        "report_type",
        "report",
        "error",
        "metadata",
        "created_at",
        "completed_at",
    }
    assert body["status"] == "succeeded" and body["error"] is None
    assert body["report"] == {
        "content": "正文",
        "model": "m",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
        # issue #25：报告的格式与（json 时）解析好的对象；markdown 报告 data 为 null
        "format": "markdown",
        "data": None,
    }
    assert body["metadata"] == {"order": 42}
    assert datetime.fromisoformat(body["completed_at"]) >= datetime.fromisoformat(
        body["created_at"]
    )


def test_failed_payload_matches_contract() -> None:
    body = json.loads(CallbackPayload.failed(_JOB, ErrorCode.LLM_TIMEOUT, "超时").model_dump_json())
    assert body["status"] == "failed" and body["report"] is None
    assert body["error"] == {"code": "llm_timeout", "message": "超时"}


def test_payload_rejects_inconsistent_outcome() -> None:
    with pytest.raises(ValidationError, match="failed 必须带 error"):
        CallbackPayload(
            trace_id="t",
            status="failed",
            report_type="x",
            report=None,
            error=None,
            metadata=None,
            created_at=_JOB.created_at,
            completed_at=_JOB.created_at,
        )


def test_error_info_maps_codes_and_hides_internals() -> None:
    assert error_info(RenderError("坏模板")) == (ErrorCode.RENDER_ERROR, "坏模板")
    assert error_info(LLMTimeout("慢"))[0] is ErrorCode.LLM_TIMEOUT
    assert error_info(KeyError("secret-detail")) == (
        ErrorCode.INTERNAL_ERROR,
        INTERNAL_ERROR_MESSAGE,
    )


def test_errors_survive_pickling_across_processes() -> None:
    import pickle

    restored = pickle.loads(pickle.dumps(LLMTimeout("慢")))
    assert isinstance(restored, LLMTimeout) and restored.message == "慢"


def test_overloaded_keeps_its_retry_after_through_pickling() -> None:
    import pickle

    restored = pickle.loads(pickle.dumps(Overloaded("满了", retry_after_s=17)))
    assert isinstance(restored, Overloaded) and restored.retry_after_s == 17
    assert restored.headers() == {"Retry-After": "17"}


def test_a_setting_given_twice_with_different_values_fails_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPORTS_ENGINE__MODEL_ID", "qwen-7b")
    args = {"engine": {"model_id": "report-llm", "model_source": "x"}}
    with pytest.raises(ValueError, match="两处") as info:
        Settings.from_args(args)
    message = str(info.value)
    assert "engine.model_id" in message and "'report-llm'" in message
    assert "REPORTS_ENGINE__MODEL_ID='qwen-7b'" in message
    # 别名形式的环境变量同样算第二处
    monkeypatch.delenv("REPORTS_ENGINE__MODEL_ID")
    monkeypatch.setenv("VLLM_API_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="VLLM_API_URL"):
        Settings.from_args({"llm_mode": "external", "vllm_api_url": "http://127.0.0.1:8/v1"})


def test_the_same_value_in_both_places_is_not_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORTS_ENGINE__MODEL_ID", "report-llm")
    monkeypatch.setenv("REPORTS_LLM__TIMEOUT_S", "300")
    monkeypatch.setenv("REPORTS_AUTH_REQUIRED", "false")
    monkeypatch.setenv("REPORTS_ENGINE__ENGINE_KWARGS", '{"max_model_len": 4096}')
    settings = Settings.from_args(
        {
            "auth_required": False,
            "llm": {"timeout_s": 300},
            "engine": {
                "model_id": "report-llm",
                "model_source": "x",
                "engine_kwargs": {"max_model_len": 4096},
            },
        }
    )
    assert settings.llm.timeout_s == 300 and settings.engine.model_id == "report-llm"


@pytest.mark.parametrize(
    "config", ["serve_config.yaml", "serve_config.cpu.yaml", "serve_config.external.yaml"]
)
def test_env_example_does_not_contradict_any_serve_config(config: str) -> None:
    env = {k.upper(): v for k, v in dotenv_values(PROJECT_ROOT / ".env.example").items() if v}
    [app] = yaml.safe_load((PROJECT_ROOT / config).read_text(encoding="utf-8"))["applications"]
    assert find_conflicts(Settings, app["args"], env) == []
