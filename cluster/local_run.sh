#!/usr/bin/env bash
# 本地运行（make run / make stop）：在独立进程组里后台 `serve run` CPU 配置。
# 进程组号记在 .run/serve.pgid；停止时只向这个进程组发信号（serve run 及它拉起的 Ray），
# 不按进程名批量杀。
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=.run
PGID_FILE=$RUN_DIR/serve.pgid
LOG_FILE=$RUN_DIR/serve.log
VENV=.venv
HOST=127.0.0.1
PORT=${REPORTS_HTTP_PORT:-8000}
READY_URL=http://$HOST:$PORT/readyz
READY_TIMEOUT_S=${READY_TIMEOUT_S:-900}

group_alive() { [[ -f $PGID_FILE ]] && kill -0 -- "-$(cat "$PGID_FILE")" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

start() {
  if group_alive; then
    echo "服务已在运行（进程组 $(cat "$PGID_FILE")）；先 make stop"; return 0
  fi
  if port_busy; then
    echo "端口 $HOST:$PORT 已被其他进程占用，无法启动"; return 1
  fi
  mkdir -p "$RUN_DIR"
  if [[ -z "${REPORTS_ENGINE__MODEL_SOURCE:-}" ]]; then
    echo "未配置模型（REPORTS_ENGINE__MODEL_SOURCE），现场生成随机权重的小模型：它的输出没有意义，只用于跑通流程"
    export REPORTS_ENGINE__MODEL_SOURCE
    REPORTS_ENGINE__MODEL_SOURCE=$("$VENV/bin/python" cluster/build_tiny_model.py .cache/tiny-model 2>/dev/null)
  fi
  export PYTHONPATH="$PWD"
  export RAY_USAGE_STATS_ENABLED=0
  # setsid：serve run 成为新进程组的组长，PGID 即其 PID。
  # 后台进程继承了“忽略 SIGINT”，先恢复默认，stop 时 serve run 才能按 Ctrl-C 的路径优雅关闭。
  setsid "$VENV/bin/python" -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "$VENV/bin/serve" run serve_config.cpu.yaml >"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PGID_FILE"
  echo "启动中（进程组 $!，日志 $LOG_FILE），等待 $READY_URL ……"
  local deadline=$((SECONDS + READY_TIMEOUT_S))
  until curl -fsS "$READY_URL" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$PGID_FILE")" 2>/dev/null; then
      echo "服务启动失败，日志末尾："; tail -n 40 "$LOG_FILE"; stop; return 1
    fi
    if ((SECONDS > deadline)); then
      echo "等待就绪超时，日志：$LOG_FILE"; return 1
    fi
    sleep 3
  done
  echo "服务已就绪：http://$HOST:$PORT （API 文档 /docs，Ray dashboard http://127.0.0.1:8265）"
}

wait_group_gone() {
  local pgid=$1 seconds=$2
  for _ in $(seq 1 "$seconds"); do
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    sleep 1
  done
  return 1
}

stop() {
  if ! group_alive; then
    echo "服务未在运行"; rm -f "$PGID_FILE"; return 0
  fi
  local pgid; pgid=$(cat "$PGID_FILE")
  # 先让 serve run 自己优雅关闭（Serve 等待在途请求、关闭 Ray），再逐级升级
  kill -INT "$pgid" 2>/dev/null || true
  if ! wait_group_gone "$pgid" 90; then
    echo "90s 内未退出，向进程组发送 SIGTERM"; kill -TERM -- "-$pgid" 2>/dev/null || true
    if ! wait_group_gone "$pgid" 15; then
      echo "仍未退出，向进程组发送 SIGKILL"; kill -KILL -- "-$pgid" 2>/dev/null || true
      wait_group_gone "$pgid" 10 || true
    fi
  fi
  rm -f "$PGID_FILE"
  echo "已停止"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "用法：$0 start|stop"; exit 2 ;;
esac
