"""本机空闲端口：单个端口，或给一个 Ray 节点用的一段（RAY_PORT_BASE … +999，见 ray_env.sh）。"""

from __future__ import annotations

import random
import socket

# 一个节点的固定端口段大小：与 cluster/ray_env.sh 的 RAY_PORT_BASE 布局一致（+0…+999）
PORT_BLOCK = 1000


def free_port() -> int:
    """127.0.0.1 上一个空闲端口（内核从临时端口范围里挑）。"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# 本进程已经发出去的段：节点刚起、还没绑上端口时，这段看起来仍是空的，不能再发给下一个节点
_HANDED_OUT: set[int] = set()


def free_port_block(size: int = PORT_BLOCK) -> int:
    """一段连续空闲端口的起点，落在 20000–29999：在内核的临时端口范围（32768 起）之下，
    不会被随机端口占走，也不碰 Serve 直连入口的副本端口段（30000–31000，见 ray_env.sh）。
    同一台机器上的每个 Ray 节点各用一段；同一进程里不会发出同一段两次。"""
    for _ in range(100):
        base = random.randrange(20000, 30000 - size + 1, size)
        if base in _HANDED_OUT:
            continue
        if all(_is_free(port) for port in range(base, base + size)):
            _HANDED_OUT.add(base)
            return base
    raise RuntimeError("20000–29999 里找不到一段空闲端口")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
