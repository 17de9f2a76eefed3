"""本机的 Prometheus（Debian 的 prometheus 包）：抓 make run 起的 Ray 集群，加载告警规则。

    python -m cluster.local_prometheus start   # make metrics：起在 127.0.0.1:9090，PID 记在 .run/
    python -m cluster.local_prometheus stop    # make stop 也会调它

Prometheus 经 Ray 的服务发现文件（<Ray 临时目录>/prom_metrics_service_discovery.json，head 的
dashboard 写）找到每个节点的指标端口。metrics 测试层用同一套函数起它自己的 Prometheus。
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from cluster.debian_packages import PackageMissing, install

REPO_ROOT = Path(__file__).resolve().parent.parent
ALERTS = REPO_ROOT / "cluster" / "prometheus" / "alerts.yml"
RUN_DIR = REPO_ROOT / ".run" / "prometheus"
PID_FILE = RUN_DIR / "prometheus.pid"
DEFAULT_DISCOVERY = Path("/tmp/ray/prom_metrics_service_discovery.json")
DEFAULT_PORT = 9090


def _say(message: str) -> None:
    """给人看的提示写标准错误（标准输出不用）。"""
    sys.stderr.write(message + "\n")


def binaries() -> tuple[Path, Path]:
    """(prometheus, promtool) 的路径；没有时以 root 用 apt-get 安装 Debian 的 prometheus 包。"""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if found[0] and found[1]:
        return Path(found[0]), Path(found[1])
    _say("安装 Debian 的 prometheus 包（apt-get）……")
    install("prometheus", "没有 prometheus / promtool")
    found = shutil.which("prometheus"), shutil.which("promtool")
    if not (found[0] and found[1]):
        raise PackageMissing("装了 prometheus 包仍找不到 prometheus / promtool")
    return Path(found[0]), Path(found[1])


def write_config(
    path: Path, discovery_file: Path, *, scrape_interval_s: float = 10, alerts: Path = ALERTS
) -> Path:
    """写一份配置：经 Ray 的服务发现文件抓所有节点，加载告警规则。"""
    interval = f"{scrape_interval_s:g}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(alerts)],
        "scrape_configs": [
            {"job_name": "ray", "file_sd_configs": [{"files": [str(discovery_file)]}]}
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def launch(config: Path, data_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """在后台起 Prometheus（只听 127.0.0.1），返回进程句柄；就绪前不返回。"""
    prometheus, _ = binaries()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    process = subprocess.Popen(
        [
            str(prometheus),
            f"--config.file={config}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    try:
        wait_ready(port, process)
    except BaseException:
        stop_process(process.pid)
        raise
    return process


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """等 /-/ready；进程先退出了就报错（看日志）。"""
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/-/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Prometheus 退出了（退出码 {process.returncode}），见它的日志")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"Prometheus {timeout_s:g}s 内没有就绪：{url}")


def stop_process(pid: int, timeout_s: float = 20) -> None:
    """SIGTERM 自己起的那个进程（它的会话），超时再 SIGKILL。"""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = 0
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        if finished == pid:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def start(port: int, discovery_file: Path) -> int:
    """make metrics：起一个抓本机 Ray 集群的 Prometheus（已在运行就什么也不做）。"""
    if PID_FILE.exists():
        pid = int(PID_FILE.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            PID_FILE.unlink()
        else:
            _say(f"Prometheus 已在运行（PID {pid}）：http://127.0.0.1:{port}")
            return 0
    config = write_config(RUN_DIR / "prometheus.yml", discovery_file)
    process = launch(config, RUN_DIR / "data", port, RUN_DIR / "prometheus.log")
    PID_FILE.write_text(str(process.pid))
    _say(
        f"Prometheus 已就绪：http://127.0.0.1:{port}（抓 {discovery_file} 里的 Ray 节点，"
        f"告警规则 {ALERTS.relative_to(REPO_ROOT)}；日志 {RUN_DIR / 'prometheus.log'}）"
    )
    return 0


def stop() -> int:
    """停掉 make metrics 起的 Prometheus（只按自己记下的 PID）。"""
    if not PID_FILE.exists():
        return 0
    stop_process(int(PID_FILE.read_text()))
    PID_FILE.unlink()
    _say("Prometheus 已停止")
    return 0


def main(argv: list[str] | None = None) -> int:
    """命令行入口。"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("METRICS_PORT", DEFAULT_PORT))
    )
    parser.add_argument("--discovery-file", type=Path, default=DEFAULT_DISCOVERY)
    args = parser.parse_args(argv)
    try:
        return start(args.port, args.discovery_file) if args.action == "start" else stop()
    except PackageMissing as exc:
        _say(str(exc))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
