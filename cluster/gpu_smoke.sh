#!/usr/bin/env bash
# GPU 路径一键冒烟：本机起 head + LLM worker，按 serve_config.yaml 部署微型模型，交报告、收回调、
# 打印 tokens/s，任何一份失败即非零退出（说明见 cluster/gpu_smoke.py）。
#   cluster/gpu_smoke.sh                  # 有 NVIDIA GPU 的机器（先 uv sync --frozen --extra gpu）
#   cluster/gpu_smoke.sh --device cpu     # 同一条路径，CPU 版 vLLM（测试用）
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=python3
[[ -x $REPO_ROOT/.venv/bin/python ]] && PYTHON=$REPO_ROOT/.venv/bin/python
cd "$REPO_ROOT"
exec "$PYTHON" -m cluster.gpu_smoke "$@"
