#!/usr/bin/env bash
# 本地运行（make run / make stop）：后台 `serve run` CPU 配置，PID 记在 .run/serve.pid。
# 停止时只向自己记录的 PID 发信号，不按进程名批量杀。
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=.run
PID_FILE=$RUN_DIR/serve.pid
LOG_FILE=$RUN_DIR/serve.log
VENV=.venv
READY_URL=http://127.0.0.1:8000/readyz
READY_TIMEOUT_S=${READY_TIMEOUT_S:-900}

is_running() { [[ -f $PID_FILE ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

start() {
  if is_running; then
    echo "服务已在运行（PID $(cat "$PID_FILE")）"; return 0
  fi
  mkdir -p "$RUN_DIR"
  if [[ -z "${REPORTS_ENGINE__MODEL_SOURCE:-}" ]]; then
    echo "未配置模型（REPORTS_ENGINE__MODEL_SOURCE），生成随机权重的小模型：它的输出没有意义，只用于跑通流程"
    export REPORTS_ENGINE__MODEL_SOURCE
    REPORTS_ENGINE__MODEL_SOURCE=$("$VENV/bin/python" cluster/build_tiny_model.py .cache/tiny-model)
  fi
  export PYTHONPATH="$PWD"
  export RAY_USAGE_STATS_ENABLED=0
  nohup "$VENV/bin/serve" run serve_config.cpu.yaml >"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  echo "启动中（PID $!，日志 $LOG_FILE），等待 $READY_URL ……"
  local deadline=$((SECONDS + READY_TIMEOUT_S))
  until curl -fsS "$READY_URL" >/dev/null 2>&1; do
    if ! is_running; then
      echo "服务启动失败，日志末尾："; tail -n 40 "$LOG_FILE"; rm -f "$PID_FILE"; return 1
    fi
    if ((SECONDS > deadline)); then
      echo "等待就绪超时，日志：$LOG_FILE"; return 1
    fi
    sleep 3
  done
  echo "服务已就绪：http://127.0.0.1:8000 （API 文档 /docs，Ray dashboard http://127.0.0.1:8265）"
}

stop() {
  if ! is_running; then
    echo "服务未在运行"; rm -f "$PID_FILE"; return 0
  fi
  local pid; pid=$(cat "$PID_FILE")
  kill -INT "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "SIGINT 后 60s 未退出，发送 SIGTERM"; kill -TERM "$pid"
  fi
  rm -f "$PID_FILE"
  echo "已停止"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "用法：$0 start|stop"; exit 2 ;;
esac
