#!/usr/bin/env bash
# 启动一个 LLM worker 节点并加入 head（容器 ray-gpu-worker 与多节点测试共用），前台阻塞。
# 资源：广播 reports_llm，serve_config 里 LLM 副本要求它，所以 LLM 副本只落在这类节点。
# 多余参数原样传给 `ray start`。
set -euo pipefail
source "$(dirname "$0")/ray_env.sh"
resources=${RAY_WORKER_RESOURCES:-'{"reports_llm": 100}'}
args=(
  --address="${RAY_HEAD_ADDRESS:-ray-head:6379}"
  --resources="$resources"
  --disable-usage-stats
  --block
)
port_args=()
ray_port_args
args+=("${port_args[@]}")
[[ -n ${RAY_NODE_IP:-} ]] && args+=(--node-ip-address="$RAY_NODE_IP")
[[ -n ${RAY_NUM_CPUS:-} ]] && args+=(--num-cpus="$RAY_NUM_CPUS")
exec ray start "${args[@]}" "$@"
