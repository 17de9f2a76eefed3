"""cluster/build_tiny_model.py：标准输出只有模型路径（local_run.sh 用 `$(…)` 取它）；生成的模型
第一个 token 几乎不可能是结束符或空白（正文总是非空）。

回归：tokenizers 的训练进度曾写进标准输出，路径变成 '\\n\\n\\n.cache/tiny-model'，
每个新克隆的第一次 `make run` 都部署失败。chaos soak 在真实引擎上撞上过空正文（llm_error）。
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from serve_app.core.settings import PROJECT_ROOT


def _build(output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "cluster/build_tiny_model.py", str(output)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def test_stdout_is_only_the_absolute_model_path_fresh_and_cached(tmp_path: Path) -> None:
    output = tmp_path / "relative-looking" / "tiny-model"
    fresh = _build(output)
    assert fresh.stdout == f"{output.resolve()}\n"
    assert (output / "config.json").exists()
    cached = _build(output)
    assert cached.stdout == f"{output.resolve()}\n"


def test_a_model_from_an_older_builder_is_rebuilt(tmp_path: Path) -> None:
    """生成方式变了（版本号变了）时旧目录重新生成，而不是沿用旧权重。"""
    output = tmp_path / "tiny-model"
    _build(output)
    marker = output / "tiny-model.json"
    marker.write_text('{"note": "旧版本没有 version 字段"}', encoding="utf-8")
    _build(output)
    assert json.loads(marker.read_text(encoding="utf-8"))["version"] >= 2


def test_the_first_token_is_almost_never_blank_or_end_of_text(tmp_path: Path) -> None:
    """只把它们的输出权重置零时，temperature 0.1 下第一个 token 是结束符或空白的概率约 0.3%
    （三千份里约十份空正文）；加上负偏置后在 temperature 1 下也低于 1e-5。"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = tmp_path / "tiny-model"
    _build(output)
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    model = AutoModelForCausalLM.from_pretrained(str(output))
    blank = [
        i
        for i in range(len(tokenizer))
        if i in tokenizer.all_special_ids or not tokenizer.decode([i]).strip()
    ]
    assert tokenizer.eos_token_id in blank
    for prompt in ("写一份销售周报", "[[sleep:1]]", "Summarize the quarter"):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
        assert torch.softmax(logits, -1)[blank].sum().item() < 1e-5, prompt
