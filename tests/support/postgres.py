"""测试用的真实 Postgres：Debian 的 postgresql 包，数据目录在本次测试的临时目录，只听 127.0.0.1。

找不到服务器程序时（CI 的新机器）以 root 用 apt-get 安装；装不上就明确失败。
服务器经自己的 PID 停止（SIGINT = 快速关闭）；root 下以 postgres 用户运行（initdb 拒绝 root）。
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from glob import glob
from pathlib import Path

import psycopg

from cluster.debian_packages import install
from cluster.ports import free_port
from tests.support.waiting import wait_until

_USER = "postgres"


def postgres_bindir() -> Path:
    """Debian 的 Postgres 程序目录（/usr/lib/postgresql/<版本>/bin）；没有就安装。"""
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        install("postgresql", "测试要用真实的 Postgres")
        found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("装了 postgresql 包仍找不到 /usr/lib/postgresql/*/bin/initdb")
    return Path(found[-1]).parent


class PostgresServer:
    """一个临时的 Postgres 实例：start / stop / restart（同一数据目录与端口），按名字建库。"""

    def __init__(self) -> None:
        self._bindir = postgres_bindir()
        self._root = os.geteuid() == 0
        self.datadir = Path(tempfile.mkdtemp(prefix="reports-pg-"))
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        if self._root:
            shutil.chown(self.datadir, _USER, _USER)
        self._as_postgres(
            [str(self._bindir / "initdb"), "-D", str(self.datadir), "-U", _USER]
            + ["--auth=trust", "--encoding=UTF8", "--no-sync"]
        )

    def _as_postgres(self, command: list[str]) -> None:
        subprocess.run(
            command,
            user=_USER if self._root else None,
            capture_output=True,
            check=True,
            timeout=120,
        )

    @property
    def pid(self) -> int:
        """postgres 主进程的 PID（各连接的后端进程是它的子进程）。"""
        assert self._process is not None
        return self._process.pid

    def url(self, database: str = "postgres") -> str:
        """连接串（trust 认证，只在 127.0.0.1）。"""
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        """前台启动 postgres 进程（PID 即服务器），等它接受连接。"""
        log = (self.datadir / "server.log").open("ab")
        self._process = subprocess.Popen(
            [str(self._bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.datadir}"]
            + ["-c", "max_connections=200"],
            user=_USER if self._root else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        wait_until(self._accepts, what="Postgres 接受连接", timeout_s=60, interval_s=0.2)
        return self

    def _accepts(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"postgres 退出了：{(self.datadir / 'server.log').read_text()}")
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """快速关闭（SIGINT）：断开连接、回滚未提交的事务；超时再 SIGKILL。"""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)

    def restart(self) -> None:
        """停掉再起（同一端口与数据目录）：已提交的数据都在。"""
        self.stop()
        self.start()

    def create_database(self) -> str:
        """建一个新库，返回它的连接串（每个测试一个，互不干扰）。"""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def cleanup(self) -> None:
        """停止服务器并删掉数据目录。"""
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)
