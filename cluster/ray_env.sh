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
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} ]]; then
  echo "缺少 RAY_AUTH_TOKEN：集群开启了 token 鉴权，请在 .env 里设置（如 openssl rand -hex 32）" >&2
  exit 2
fi
