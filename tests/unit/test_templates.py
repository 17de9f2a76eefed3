"""模板目录与沙箱渲染。"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import JsonValue

from serve_app.core.errors import RenderError, RequestError
from serve_app.models.templates import TemplateSpec
from serve_app.prompting.catalog import TemplateCatalog
from serve_app.prompting.renderer import PromptRenderer
from tests.support.sample import load_catalog

_MINIMAL = """
version: 1
templates:
  - name: demo
    title: 演示
    description: 演示模板
    inputs:
      - {name: topic, description: 主题}
    system: "系统"
    user: "{user_tpl}"
    lengths: {short: {max_tokens: 8}, medium: {max_tokens: 16}, long: {max_tokens: 32}}
    sample_inputs: {topic: "x"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "templates.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_repository_templates_load_and_render_with_samples() -> None:
    catalog = load_catalog()
    assert len(catalog.names) >= 4
    renderer = PromptRenderer(catalog)
    renderer.warm_up()
    for name in catalog.names:
        spec = catalog.get(name)
        assert spec.temperature == pytest.approx(0.1)
        for length in ("short", "medium", "long"):
            prompt = renderer.render(name, spec.sample_inputs, length)
            assert prompt.max_tokens == spec.lengths[length].max_tokens
            assert prompt.system and prompt.user
            # 每个必填输入的值都进了提示词
            for value in spec.sample_inputs.values():
                assert str(value) in prompt.user


def test_presets_grow_with_length() -> None:
    for item in load_catalog().describe():
        sizes = [item.lengths[n].max_tokens for n in ("short", "medium", "long")]
        assert sizes == sorted(sizes) and len(set(sizes)) == 3, item.name


def test_unknown_type_lists_known_types() -> None:
    catalog = load_catalog()
    with pytest.raises(RequestError) as info:
        catalog.validate_request("weekly_magic", {}, None)
    for name in catalog.names:
        assert name in info.value.message


def test_missing_and_extra_inputs_are_named() -> None:
    catalog = load_catalog()
    with pytest.raises(RequestError) as info:
        catalog.validate_request("sales_weekly", {"period": "W47", "colour": "red"}, "short")
    message = info.value.message
    assert "region" in message and "sales_data" in message
    assert "colour" in message and "未知输入" in message


def test_empty_required_input_counts_as_missing() -> None:
    with pytest.raises(RequestError, match="region"):
        load_catalog().validate_request(
            "sales_weekly", {"period": "W47", "region": "", "sales_data": "x"}, None
        )


def test_oversized_input_is_refused() -> None:
    inputs: dict[str, JsonValue] = {"period": "W47", "region": "华东", "sales_data": "x" * 9000}
    with pytest.raises(RequestError, match="sales_data' 过长"):
        load_catalog().validate_request("sales_weekly", inputs, None)


def test_default_length_applies() -> None:
    catalog = load_catalog()
    spec = catalog.get("sales_weekly")
    _, length = catalog.validate_request("sales_weekly", dict(spec.sample_inputs), None)
    assert length == spec.default_length


def test_optional_input_is_rendered_only_when_given() -> None:
    catalog = load_catalog()
    renderer = PromptRenderer(catalog)
    spec = catalog.get("sales_weekly")
    without = renderer.render("sales_weekly", dict(spec.sample_inputs), "short")
    assert "补充要点" not in without.user
    with_it = renderer.render(
        "sales_weekly", {**spec.sample_inputs, "highlights": "大客户续约"}, "short"
    )
    assert "补充要点：大客户续约" in with_it.user


def test_inputs_are_data_never_templates() -> None:
    catalog = load_catalog()
    renderer = PromptRenderer(catalog)
    spec = catalog.get("sales_weekly")
    attack = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for x in range(9) %}y{% endfor %}"
    prompt = renderer.render("sales_weekly", {**spec.sample_inputs, "sales_data": attack}, "short")
    assert attack in prompt.user
    assert "<class" not in prompt.user


def test_sandbox_blocks_attribute_walks_in_templates(tmp_path: Path) -> None:
    path = _write(tmp_path, _MINIMAL.replace("{user_tpl}", "{{ topic.__class__.__mro__ }}"))
    renderer = PromptRenderer(TemplateCatalog.from_file(path))
    with pytest.raises(RenderError, match="demo"):
        renderer.render("demo", {"topic": "x"}, "short")


def test_undefined_variable_fails_warm_up(tmp_path: Path) -> None:
    path = _write(tmp_path, _MINIMAL.replace("{user_tpl}", "{{ topic }} {{ not_declared }}"))
    renderer = PromptRenderer(TemplateCatalog.from_file(path))
    with pytest.raises(RenderError, match="not_declared"):
        renderer.warm_up()


def test_template_syntax_error_fails_at_load(tmp_path: Path) -> None:
    path = _write(tmp_path, _MINIMAL.replace("{user_tpl}", "{{ topic "))
    with pytest.raises(Exception, match="unexpected end of template|expected token"):
        PromptRenderer(TemplateCatalog.from_file(path))


def test_invalid_template_file_is_rejected_with_path(tmp_path: Path) -> None:
    bad = _MINIMAL.replace("{user_tpl}", "x").replace("long: {max_tokens: 32}", "")
    path = _write(tmp_path, bad.replace(", }", "}"))
    with pytest.raises(ValueError, match="templates.yaml"):
        TemplateCatalog.from_file(path)
    with pytest.raises(ValueError, match="无法读取"):
        TemplateCatalog.from_file(tmp_path / "missing.yaml")


def test_sample_inputs_must_cover_required_inputs() -> None:
    with pytest.raises(ValueError, match="sample_inputs 缺少"):
        TemplateSpec.model_validate(
            {
                "name": "demo",
                "title": "t",
                "description": "d",
                "inputs": [{"name": "topic", "description": "d"}],
                "system": "s",
                "user": "{{ topic }}",
                "lengths": {
                    "short": {"max_tokens": 1},
                    "medium": {"max_tokens": 2},
                    "long": {"max_tokens": 3},
                },
                "sample_inputs": {},
            }
        )


def test_describe_lists_required_inputs_and_examples() -> None:
    items = {item.name: item for item in load_catalog().describe()}
    sales = items["sales_weekly"]
    assert sales.inputs == ["period", "region", "sales_data"]
    assert sales.optional_inputs == ["highlights"]
    assert set(sales.example_inputs) >= set(sales.inputs)
