#!/usr/bin/env bash
# 启动 Ray head 节点（容器 ray-head 与多节点测试共用）。多余参数原样传给 `ray start`（如 --block）。
# 资源：head 广播 reports_cpu（轻量部署：入口、渲染、回调要求它）与 reports_ledger（只有 head 有，
# Ledger 部署要求它：账本文件在 head 的 /data 卷上）。
set -euo pipefail
source "$(dirname "$0")/ray_env.sh"
resources=${RAY_HEAD_RESOURCES:-'{"reports_cpu": 100, "reports_ledger": 1}'}
args=(
  --head
  --port="${RAY_GCS_PORT:-6379}"
  --dashboard-host="${RAY_DASHBOARD_HOST:-127.0.0.1}"
  --dashboard-port="${RAY_DASHBOARD_PORT:-8265}"
  --num-gpus=0
  --resources="$resources"
  --disable-usage-stats
)
port_args=()
ray_port_args
if [[ -n ${RAY_PORT_BASE:-} ]]; then
  port_args+=(--ray-client-server-port=$((RAY_PORT_BASE + 6)))
fi
args+=("${port_args[@]}")
[[ -n ${RAY_NODE_IP:-} ]] && args+=(--node-ip-address="$RAY_NODE_IP")
[[ -n ${RAY_NUM_CPUS:-} ]] && args+=(--num-cpus="$RAY_NUM_CPUS")
exec ray start "${args[@]}" "$@"
