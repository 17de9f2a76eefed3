#!/usr/bin/env bash
# 本地运行（make run / make stop）：用容器同款脚本在本机起一个单节点 Ray 集群并部署 CPU 配置。
#   start：cluster/start_head.sh --block（独立进程组，head 同时广播 reports_cpu 与 reports_llm）
#          → cluster/deploy.sh serve_config.cpu.yaml → 等 /readyz
#   deploy：把（改过的）SERVE_CONFIG 再 serve deploy 到运行中的集群：只改副本数、扩缩、
#          max_ongoing_requests 等选项时 Serve 就地更新，不重启副本、不丢在途作业
#   stop ：serve shutdown（优雅：等在途请求）→ 向自己记录的 head 进程发 SIGTERM（Ray 关闭本节点进程）
#          → 超时再对该进程组 SIGKILL。只动自己记录的 PID，不按进程名批量杀。
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=.run
PID_FILE=$RUN_DIR/head.pid
TOKEN_FILE=$RUN_DIR/ray_auth_token
SECRET_FILE=$RUN_DIR/callback_signing_secret
LOG_FILE=$RUN_DIR/ray-head.log
VENV=.venv
HOST=127.0.0.1
PORT=8000
export RAY_GCS_PORT=${RAY_GCS_PORT:-6379}
export RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
export RAY_DASHBOARD_ADDRESS=http://$HOST:$RAY_DASHBOARD_PORT
export RAY_NODE_IP=$HOST
export RAY_HEAD_RESOURCES='{"reports_cpu": 100, "reports_ledger": 1, "reports_llm": 100}'
export SERVE_CONFIG=${SERVE_CONFIG:-serve_config.cpu.yaml}
export READY_URL=http://$HOST:$PORT/readyz
export DEPLOY_TIMEOUT_S=${READY_TIMEOUT_S:-900}
# dashboard 的 Metrics 页与 Serve 图表从这个 Prometheus 取数（make metrics 起它）
export RAY_PROMETHEUS_HOST=${RAY_PROMETHEUS_HOST:-http://$HOST:${METRICS_PORT:-9090}}
# 单节点：stop 已先 serve shutdown（等在途请求），head 收到 SIGTERM 后不必再排空（无处可迁，默认白等 30 秒）
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}

head_alive() { [[ -f $PID_FILE ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }
port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

load_token() {
  if [[ ! -s $TOKEN_FILE ]]; then
    mkdir -p "$RUN_DIR"
    (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))' >"$TOKEN_FILE")
  fi
  RAY_AUTH_TOKEN=$(cat "$TOKEN_FILE")
  export RAY_AUTH_TOKEN
}

# 回调签名密钥（Standard Webhooks，whsec_ 开头）：没有就生成一个，make demo 与 backend B 的接收方用同一个
load_signing_secret() {
  if [[ -n ${CALLBACK_SIGNING_SECRET:-} ]]; then
    export CALLBACK_SIGNING_SECRET; return 0
  fi
  if [[ ! -s $SECRET_FILE ]]; then
    mkdir -p "$RUN_DIR"
    (umask 077 && "$VENV/bin/python" -c \
      'import base64, secrets; print("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())' \
      >"$SECRET_FILE")
  fi
  CALLBACK_SIGNING_SECRET=$(cat "$SECRET_FILE")
  export CALLBACK_SIGNING_SECRET
}

start() {
  if head_alive; then
    echo "服务已在运行（head PID $(cat "$PID_FILE")），无需再启动；要重启先 make stop"; return 0
  fi
  # 吞吐模式（cluster/ray_env.sh 默认）下 head 还有 Serve 的后备 Python 代理（HAProxy 没有可用入口副本时转给它）
  local ports=("$PORT" "$RAY_GCS_PORT" "$RAY_DASHBOARD_PORT")
  if [[ ${RAY_SERVE_ENABLE_HA_PROXY:-${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}} == 1 ]]; then
    ports+=("${RAY_SERVE_FALLBACK_PROXY_HTTP_PORT:-8500}")
  fi
  for port in "${ports[@]}"; do
    if port_busy "$port"; then
      echo "端口 $HOST:$port 已被占用，无法启动：先停掉占用它的程序（ss -ltnp 'sport = :$port' 可查是谁）" >&2
      return 1
    fi
  done
  mkdir -p "$RUN_DIR"
  load_token
  load_signing_secret
  if [[ -z "${REPORTS_ENGINE__MODEL_SOURCE:-}" ]]; then
    echo "未配置模型（REPORTS_ENGINE__MODEL_SOURCE），现场生成随机权重的小模型：它的输出没有意义，只用于跑通流程"
    # 标准输出只有模型目录；生成进度走标准错误，照常显示
    REPORTS_ENGINE__MODEL_SOURCE=$("$VENV/bin/python" cluster/build_tiny_model.py .cache/tiny-model)
  fi
  # 模型等配置经 head 进程的环境传给 Ray 的各个进程（应用构建器在集群里解析 Settings）
  export REPORTS_ENGINE__MODEL_SOURCE
  setsid cluster/start_head.sh --block >"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  echo "Ray head 启动中（PID $!，日志 $LOG_FILE）"
  if ! cluster/deploy.sh; then
    echo "部署失败，停止集群"; stop; return 1
  fi
  echo "服务已就绪：http://$HOST:$PORT （API 文档 /docs，Ray dashboard $RAY_DASHBOARD_ADDRESS）"
  echo "本地 Ray 的 token 在 $TOKEN_FILE（ray / serve 命令行需要 RAY_AUTH_MODE=token 与 RAY_AUTH_TOKEN）"
  echo "回调签名密钥在 $SECRET_FILE（backend B 的接收方用它验签，见 README“接入 backend B”）"
}

deploy() {
  if ! head_alive; then
    echo "服务未在运行：先 make run" >&2; return 1
  fi
  load_token
  echo "把 $SERVE_CONFIG 应用到运行中的集群"
  cluster/deploy.sh
}

wait_gone() {
  local pid=$1 seconds=$2
  for _ in $(seq 1 "$seconds"); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 1
  done
  return 1
}

stop() {
  if ! head_alive; then
    echo "服务未在运行"; rm -f "$PID_FILE"; return 0
  fi
  local pid; pid=$(cat "$PID_FILE")
  load_token
  RAY_AUTH_MODE=token "$VENV/bin/serve" shutdown -y --address "$RAY_DASHBOARD_ADDRESS" >/dev/null 2>&1 || true
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 90; then
    echo "head 90s 内未退出，向其进程组发送 SIGKILL"; kill -KILL -- "-$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || true
  fi
  rm -f "$PID_FILE"
  echo "已停止"
}

case "${1:-}" in
  start) start ;;
  deploy) deploy ;;
  stop) stop ;;
  *) echo "用法：$0 start|deploy|stop"; exit 2 ;;
esac
