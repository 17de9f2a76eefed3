"""本机空闲端口：单个端口，或给一个 Ray 节点用的一段（RAY_PORT_BASE … +999，见 ray_env.sh）。"""

from __future__ import annotations

import random
import socket
import time

# 一个节点的固定端口段大小：与 cluster/ray_env.sh 的 RAY_PORT_BASE 布局一致（+0…+999）
PORT_BLOCK = 1000


def free_port() -> int:
    """127.0.0.1 上一个空闲端口（内核从临时端口范围里挑）。"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# 本进程发出去的段 → 发出的时刻。节点刚起、还没绑上端口时这段看起来仍是空的，不能再发给下一个节点；
# 节点绑上端口后靠“段里有端口被占”就认得出，所以预留只需盖住启动那一会儿：节点停下时交回
# （release_port_block），没交回的（进程被杀、测试中途失败）过了 _RESERVED_S 也自动失效，
# 20000–29999 只有 10 段，不能让一次长测试会话把它们一段段攒光。
_HANDED_OUT: dict[int, float] = {}
_RESERVED_S = 120.0
_clock = time.monotonic  # 测试替换它来模拟时间流逝


def free_port_block(size: int = PORT_BLOCK) -> int:
    """一段连续空闲端口的起点，落在 20000–29999：在内核的临时端口范围（32768 起）之下，
    不会被随机端口占走，也不碰 Serve 直连入口的副本端口段（30000–31000，见 ray_env.sh）。
    同一台机器上的每个 Ray 节点各用一段；同一进程里不会发出同一段两次。"""
    now = _clock()
    for base, handed_at in list(_HANDED_OUT.items()):
        if now - handed_at > _RESERVED_S:
            del _HANDED_OUT[base]
    for _ in range(100):
        base = random.randrange(20000, 30000 - size + 1, size)
        if base in _HANDED_OUT:
            continue
        if all(_is_free(port) for port in range(base, base + size)):
            _HANDED_OUT[base] = now
            return base
    raise RuntimeError(
        f"20000–29999 里找不到一段空闲端口（本进程预留着 {sorted(_HANDED_OUT)}，其余段有端口被占）"
    )


def release_port_block(base: int) -> None:
    """交回 free_port_block 发出的一段（用它的节点已停下）。"""
    _HANDED_OUT.pop(base, None)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
