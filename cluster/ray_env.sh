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

# 固定端口（跨主机的节点之间要互相连上，防火墙只放行已知端口）：设了 RAY_PORT_BASE 时本节点的端口
#   +0 raylet（node manager）  +1 对象管理器  +2 runtime env agent  +3 dashboard agent gRPC
#   +4 dashboard agent HTTP    +5 指标导出    +6 Ray Client（仅 head）  +100…+999 worker 进程
# 另有 GCS（RAY_GCS_PORT，默认 6379）、dashboard（8265）、Serve HTTP（8000）。同一台主机上的两个节点
# （如 head 与本机的 GPU worker，都用主机网络时）要用不同的 RAY_PORT_BASE。不设则由 Ray 随机挑。
ray_port_args() {
  local base=${RAY_PORT_BASE:-}
  if [[ -z $base ]]; then
    # 不固定整段时也可以只固定指标端口（compose 的 bridge 网络：prometheus 按服务发现文件里的这个端口抓）
    if [[ -n ${RAY_METRICS_EXPORT_PORT:-} ]]; then
      port_args=(--metrics-export-port="$RAY_METRICS_EXPORT_PORT")
    fi
    return 0
  fi
  if ! [[ $base =~ ^[0-9]+$ ]] || ((base < 1024 || base + 999 > 65535)); then
    echo "RAY_PORT_BASE=$base 不是 1024–64536 之间的整数" >&2
    return 2
  fi
  port_args=(
    --node-manager-port=$((base))
    --object-manager-port=$((base + 1))
    --runtime-env-agent-port=$((base + 2))
    --dashboard-agent-grpc-port=$((base + 3))
    --dashboard-agent-listen-port=$((base + 4))
    --metrics-export-port=$((base + 5))
    --min-worker-port=$((base + 100))
    --max-worker-port=$((base + 999))
  )
}
