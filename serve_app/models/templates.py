"""模板条目的严格模型：YAML 里每个报告类型都按它校验。"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from serve_app.models.output import OutputSpec
from serve_app.models.reports import ReportLength


class InputSpec(BaseModel):
    """一个模板输入。"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    required: bool = True
    max_chars: int = Field(4000, gt=0, description="输入序列化后的最大字符数")


class LengthPreset(BaseModel):
    """一种篇幅的生成参数。"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(gt=0, le=32768)


class TemplateSpec(BaseModel):
    """一个报告类型。"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    description: str
    inputs: tuple[InputSpec, ...] = Field(min_length=1)
    system: str
    user: str
    lengths: dict[ReportLength, LengthPreset]
    default_length: ReportLength = "medium"
    temperature: float = Field(0.1, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    sample_inputs: dict[str, JsonValue] = Field(
        description="副本启动时用它试渲染一次，模板坏了部署即失败"
    )
    output: OutputSpec = Field(
        default_factory=OutputSpec, description="输出格式：markdown（默认）或带 schema 的 json"
    )

    @model_validator(mode="after")
    def _check(self) -> TemplateSpec:
        if set(self.lengths) != {"short", "medium", "long"}:
            raise ValueError(f"{self.name}: lengths 必须包含 short、medium、long")
        names = [spec.name for spec in self.inputs]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.name}: 输入名重复")
        missing = {s.name for s in self.inputs if s.required} - set(self.sample_inputs)
        if missing:
            raise ValueError(f"{self.name}: sample_inputs 缺少 {sorted(missing)}")
        return self

    @property
    def required_inputs(self) -> list[str]:
        """必填输入名。"""
        return [spec.name for spec in self.inputs if spec.required]


class TemplateFile(BaseModel):
    """templates.yaml 的顶层结构。"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    templates: tuple[TemplateSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TemplateFile:
        names = [t.name for t in self.templates]
        if len(names) != len(set(names)):
            raise ValueError("报告类型名重复")
        return self


class RenderedPrompt(BaseModel):
    """渲染结果：交给 LLM 阶段的全部内容。"""

    model_config = ConfigDict(frozen=True)

    system: str
    user: str
    max_tokens: int
    temperature: float
    top_p: float
    output: OutputSpec = Field(default_factory=OutputSpec)
    # 引擎调度的优先级（vLLM：数小的先；见 models.reports.ENGINE_PRIORITY），由作业的 priority 来
    engine_priority: int = 0

    def chat_messages(self) -> list[dict[str, str]]:
        """OpenAI 形状的消息列表（system + user）。"""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


class ReportTypeInfo(BaseModel):
    """`GET /v1/report-types` 的一项。"""

    name: str
    title: str
    description: str
    inputs: list[str]
    optional_inputs: list[str]
    lengths: dict[ReportLength, LengthPreset]
    default_length: ReportLength
    temperature: float
    example_inputs: dict[str, JsonValue] = Field(description="一组可直接提交的示例输入")
    output: OutputSpec = Field(description="输出格式（与 templates.yaml 的 output 同形）")
