"""故障层与 soak 的 backend B 替身（tests/support/fault_app.py 的 BackendB）：停掉再起来时
不漏记一个它答过 2xx 的回调。

回归：30 分钟的 chaos soak 里，“拒绝连接”的故障停掉它的那一刻还有回调进来并被答 200——服务记为送达，
替身先抄了记录再停服务，这一份没进历史，对账把它算成“丢失”。
"""

from __future__ import annotations

import threading
import time

import httpx

from tests.support.fault_app import BackendB


def test_every_callback_answered_2xx_is_kept_across_stop_and_start() -> None:
    backend = BackendB()
    answered: set[str] = set()
    done = threading.Event()
    lock = threading.Lock()

    def post(worker: int) -> None:
        with httpx.Client(timeout=2) as client:
            n = 0
            while not done.is_set():
                trace_id = f"t-{worker}-{n}"
                n += 1
                try:
                    response = client.post(backend.url, json={"trace_id": trace_id})
                except httpx.HTTPError:
                    time.sleep(0.005)  # 停着：连接被拒
                    continue
                if response.is_success:
                    with lock:
                        answered.add(trace_id)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            time.sleep(0.3)
            backend.stop()
            time.sleep(0.1)
            backend.start()
        time.sleep(0.3)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)
        backend.stop()
    kept = {r.body.get("trace_id") for r in backend.received() if 200 <= r.status_returned < 300}
    assert len(answered) > 100
    assert answered <= kept, sorted(answered - kept)[:5]
