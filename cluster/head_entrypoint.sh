#!/usr/bin/env bash
# 容器 ray-head 的入口：启动 head（前台阻塞）→ 部署 serve_config → 一直跟随 head 进程。
set -euo pipefail
here=$(dirname "$0")
"$here/start_head.sh" --block &
head_pid=$!
trap 'kill -TERM "$head_pid" 2>/dev/null; wait "$head_pid"' TERM INT
"$here/deploy.sh"
wait "$head_pid"
