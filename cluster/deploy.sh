#!/usr/bin/env bash
# 等集群可用后 `serve deploy` 一份配置，再等应用的 /readyz 变绿（容器 ray-head 与测试共用）。
#   SERVE_CONFIG           要部署的配置（默认 serve_config.yaml）
#   RAY_DASHBOARD_ADDRESS  dashboard 地址（默认 http://127.0.0.1:8265）
#   READY_URL              就绪探测地址（默认 http://127.0.0.1:8000/readyz）
#   DEPLOY_TIMEOUT_S       等待上限（默认 1800 秒：首次加载模型可能很慢）
set -euo pipefail
source "$(dirname "$0")/ray_env.sh"
cd "$REPO_ROOT"
CONFIG=${SERVE_CONFIG:-serve_config.yaml}
DASHBOARD=${RAY_DASHBOARD_ADDRESS:-http://127.0.0.1:8265}
READY_URL=${READY_URL:-http://127.0.0.1:8000/readyz}
TIMEOUT_S=${DEPLOY_TIMEOUT_S:-1800}
deadline=$((SECONDS + TIMEOUT_S))

probe() { python -m cluster.http_probe "$@"; }
echo "等待 Ray dashboard $DASHBOARD ……"
until probe "$DASHBOARD/api/version" --bearer-env RAY_AUTH_TOKEN; do
  ((SECONDS < deadline)) || { echo "dashboard 未就绪，放弃" >&2; exit 1; }
  sleep 2
done
echo "部署 $CONFIG ……"
serve deploy "$CONFIG" --address "$DASHBOARD"
echo "等待应用就绪 $READY_URL ……"
until probe "$READY_URL"; do
  ((SECONDS < deadline)) || { echo "应用在 ${TIMEOUT_S}s 内未就绪" >&2; exit 1; }
  # 构建或部署失败不会自己好转：立即报出原因
  if status=$(serve status --address "$DASHBOARD" 2>/dev/null) && grep -q "DEPLOY_FAILED" <<<"$status"; then
    echo "部署失败：" >&2; echo "$status" >&2; exit 1
  fi
  sleep 3
done
echo "应用已就绪"
