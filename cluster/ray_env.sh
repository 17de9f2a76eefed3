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
# Serve 的吞吐模式（默认开；docs/performance.md 有并排的数：零成本引擎并发 8–64 时吞吐高两到五成，代理那一站的
# CPU 从约 10 ms/报告降到 1.5 ms）：
#   RAY_SERVE_THROUGHPUT_OPTIMIZED=1：直连入口（HTTP 直接进入口副本，不再经 Python 代理转一次 Ray 调用）、
#     句柄默认走 gRPC、用户代码与路由器在副本的主事件循环、Serve 访问日志缓冲写盘、启动后冻结 GC；
#   RAY_SERVE_ENABLE_HA_PROXY=1：用 HAProxy（随 ray[serve] 安装）在 http_options 的端口上分发到各入口副本，
#     取代 Python 代理。入口副本各自在 30000–31000 段里监听一个端口（HAProxy 模式下监听所有网卡）。
# 两个都设 0 回到经典模式（Python 代理；make bench-overhead ARGS="--serve-mode classic,throughput" 并排测）。
export RAY_SERVE_THROUGHPUT_OPTIMIZED=${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}
export RAY_SERVE_ENABLE_HA_PROXY=${RAY_SERVE_ENABLE_HA_PROXY:-$RAY_SERVE_THROUGHPUT_OPTIMIZED}
# 直连入口的副本关闭前至少保持监听这么久，让前面的负载均衡摘掉它（Ray 默认 30 秒）；HAProxy 与入口
# 副本同在 head，配置随 Serve 的路由表即时更新，且会重试被拒的连接：5 秒足够，缩容与 make stop 不白等
export RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=${RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S:-5}
# 吞吐模式把 Serve 自己的日志（副本的 replica_*.log：访问日志、启动与错误）攒满 1000 行才写盘，dashboard 的
# 副本日志页因此长时间是空的；看 dashboard 的人要即时看到，这里写回每行即写（基准里的数就是这个设置下测的）
export RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=${RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE:-1}
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
  # 吞吐模式下直连入口的副本 HTTP 端口段（Ray 默认 30000–31000）不能与本节点的段重叠：
  # 重叠时入口副本与 raylet / worker 进程抢同一批端口
  local di_min=${RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT:-30000} di_max=${RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT:-31000}
  if [[ $RAY_SERVE_THROUGHPUT_OPTIMIZED == 1 || $RAY_SERVE_ENABLE_HA_PROXY == 1 ]] &&
    ((base <= di_max && base + 999 >= di_min)); then
    echo "RAY_PORT_BASE=$base 的段（$base–$((base + 999))）与入口副本的 HTTP 端口段 $di_min–$di_max 重叠：换一个基数" >&2
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
