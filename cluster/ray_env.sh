#!/usr/bin/env bash
# 由 start_head.sh / start_worker.sh / deploy.sh source：三者共用的环境。
# 集群一律开 Ray 的 token 鉴权：各节点与 CLI 用同一个 RAY_AUTH_TOKEN（.env 提供，勿提交）。
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# 仓库内有 .venv（本地）就用它；镜像里 ray 已在 PATH 上
if [[ -x $REPO_ROOT/.venv/bin/ray ]]; then
  export PATH=$REPO_ROOT/.venv/bin:$PATH
fi
export PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}
export RAY_USAGE_STATS_ENABLED=0
# Serve 的吞吐优化模式（直连入口、句柄走 gRPC、请求路径日志缓冲等）：零成本引擎上控制面吞吐高约六成
# （见 README“性能”），但还没在故障层验证过（入口副本至少排空 30 秒、日志延后落盘），默认关；设 1 打开。
export RAY_SERVE_THROUGHPUT_OPTIMIZED=${RAY_SERVE_THROUGHPUT_OPTIMIZED:-0}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
  echo "缺少 RAY_AUTH_TOKEN：集群开启了 token 鉴权，请在 .env 里设置（如 openssl rand -hex 32）" >&2
  exit 2
fi
