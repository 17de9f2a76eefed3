#!/usr/bin/env bash
# worker 容器的健康检查：本节点能连上 head 的 GCS（token 鉴权由 ray_env.sh 设置）。
set -euo pipefail
source "$(dirname "$0")/ray_env.sh"
exec ray health-check --address "${RAY_HEAD_ADDRESS:-ray-head:6379}"
