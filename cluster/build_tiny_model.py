"""现场生成一个极小的 Llama 模型（随机权重），供离线运行与测试使用。

生成的文本没有意义，只用来让 vLLM 真正跑起来；要写真报告请配置真实模型。
用法：python cluster/build_tiny_model.py <输出目录>
标准输出只有一行：模型目录的绝对路径（脚本用 `$(…)` 取它）；训练进度等其余输出一律进标准错误。
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# 训练分词器用的几行语料：中英混合，覆盖报告常见字符
_CORPUS = [
    "本周销售额同比增长百分之十二，华东区表现最好。",
    "客户反馈集中在交付周期和售后响应速度。",
    "故障复盘：数据库连接池耗尽导致服务不可用二十分钟。",
    "项目周报：完成接口联调，下周进入压测阶段。",
    "The quick brown fox jumps over the lazy dog. Report summary and next steps.",
    "风险、问题、结论、建议、行动项、负责人、截止日期。",
]

# 最简对话模板：把 system/user 消息拼接后接 assistant 开头
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_MARKER = "tiny-model.json"
# 生成方式变了就加一：目录里旧版本的模型会重新生成
_VERSION = 3
# 偏置（见 _add_output_biases）：残差流第 0 维的常量，引号与空白 / 特殊 token 在该维上的输出权重
_BIAS_DIM_VALUE = 0.1
_QUOTE_WEIGHT = 0.25
_BLANK_WEIGHT = -4.0


def build_tiny_model(output_dir: Path) -> Path:
    """在 output_dir 生成分词器与模型；同一版本已存在则直接复用。"""
    if _built_version(output_dir) == _VERSION:
        return output_dir
    # 依赖较重，只在真正生成时导入
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    output_dir.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(str(output_dir))

    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    _add_output_biases(model, fast)
    model.save_pretrained(str(output_dir))
    (output_dir / _MARKER).write_text(
        json.dumps(
            {"note": "随机权重的测试模型，输出无意义", "version": _VERSION}, ensure_ascii=False
        ),
        encoding="utf-8",
    )
    return output_dir


def _built_version(output_dir: Path) -> int | None:
    """目录里已生成模型的版本；没有或读不了为 None。"""
    try:
        marker = json.loads((output_dir / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = marker.get("version", 1) if isinstance(marker, dict) else None
    return version if isinstance(version, int) else None


def _add_output_biases(model: Any, tokenizer: Any) -> None:
    """给几个 token 一个恒定的 logit 偏置（Llama 的 lm_head 没有偏置项，于是造一个）。

    做法：残差流第 0 维恒为常量（嵌入该维取常量，各层既不读它也不写它），最终 RMSNorm 之后它恒为
    正；lm_head 只在要偏置的 token 那一行给该维权重。

    - 特殊 token 与纯空白 token：输出权重置零，再给一个大的负偏置。随机权重下所有 logit 都挤在 0
      附近，只置零时第一个 token 是结束符或空白的概率约 0.3%（temperature 0.1；chaos soak 在
      真实引擎上三千多份里撞上过，正文为空、作业以 llm_error 失败）；加了偏置后可以忽略。
      约束解码只剩结束符与空白可选时，它们之间的相对大小不变，照样收尾。
    - 双引号：一个小的正偏置，让按 JSON Schema 约束解码的字符串写得完。随机权重下引号只是几百个
      token 之一，约束解码时字符串里什么字符都合法，一个字符串往往写到 max_tokens 也不收尾（实测
      内置 JSON 类型 8 份里 0 份写完）；偏置的大小取到字符串通常有几个字、又总能收尾（实测 16 份
      全在 600 个 token 内写完）。代价是 markdown 输出里引号偏多——反正随机模型的输出本来无意义。
    """
    import torch

    blank = [
        token_id
        for token_id in range(len(tokenizer))
        if token_id in tokenizer.all_special_ids or not tokenizer.decode([token_id]).strip()
    ]
    quote = tokenizer.convert_tokens_to_ids('"')
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = _BIAS_DIM_VALUE
        for layer in model.model.layers:
            layer.input_layernorm.weight[0] = 0.0
            layer.post_attention_layernorm.weight[0] = 0.0
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[blank] = 0.0
        model.lm_head.weight[blank, 0] = _BLANK_WEIGHT
        model.lm_head.weight[quote, 0] = _QUOTE_WEIGHT


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """在文件描述符层面把标准输出改到标准错误：tokenizers（Rust）的进度直接写 fd 1，
    只改 sys.stdout 挡不住它。"""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    """命令行入口：标准输出只写模型目录的绝对路径。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)
    with stdout_to_stderr():
        path = build_tiny_model(args.output_dir).resolve()
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
