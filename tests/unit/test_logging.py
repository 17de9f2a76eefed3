"""日志：标准库日志进入 loguru，trace_id 由上下文绑定，Ray Serve 的 stderr 那一路被接管。"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from serve_app.core import logging as logging_setup
from serve_app.core.logging import InterceptHandler, configure_logging
from tests.support.logs import captured_logs


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """每个测试重新配置，结束后恢复 loguru 默认输出。"""
    logging_setup._configured = None
    yield
    logging_setup._configured = None
    logger.remove()
    logger.add(logging.StreamHandler(), level="DEBUG")
    logging.basicConfig(handlers=[], force=True)


def test_stdlib_logging_is_routed_with_request_id() -> None:
    configure_logging("DEBUG")
    with captured_logs() as logs:
        logging.getLogger("some.library").warning("来自标准库 %s", "x")
        record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "访问", None, None)
        record.request_id = "req-7"
        logging.getLogger("uvicorn.error").handle(record)
    assert [(r["message"], r["trace_id"], r["name"]) for r in logs] == [
        ("来自标准库 x", "-", "some.library"),
        ("访问", "req-7", "uvicorn.error"),
    ]


def test_contextualize_binds_trace_id_for_every_line() -> None:
    configure_logging("DEBUG")
    with captured_logs() as logs:
        with logger.contextualize(trace_id="t-9"):
            logger.info("一")
            logging.getLogger("some.client.library").info("二")
        logger.info("三")
    assert [r["trace_id"] for r in logs] == ["t-9", "t-9", "-"]


def test_ray_serve_stream_handler_is_replaced_but_files_kept(tmp_path: Path) -> None:
    serve_logger = logging.getLogger("ray.serve")
    saved = list(serve_logger.handlers)
    stream = logging.StreamHandler()
    marker = logging.Filter("ray")
    stream.addFilter(marker)
    file_handler = logging.FileHandler(tmp_path / "replica.log")
    serve_logger.handlers = [stream, file_handler]
    try:
        configure_logging("INFO")
        handlers = serve_logger.handlers
        assert file_handler in handlers and stream not in handlers
        [intercept] = [h for h in handlers if isinstance(h, InterceptHandler)]
        assert marker in intercept.filters
    finally:
        file_handler.close()
        serve_logger.handlers = saved


def test_json_file_sink_writes_one_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "jobs.jsonl"
    configure_logging("INFO", path)
    with logger.contextualize(trace_id="t-json"):
        logger.info("写入")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and '"trace_id": "t-json"' in lines[0]


def test_configure_is_idempotent() -> None:
    configure_logging("INFO")
    with captured_logs() as logs:
        configure_logging("INFO")  # 同参数重复调用不会移除已有的输出
        logger.info("仍在")
    assert [r["message"] for r in logs] == ["仍在"]


def test_url_query_strings_are_redacted_in_every_sink(tmp_path: Path) -> None:
    json_path = tmp_path / "jobs.jsonl"
    configure_logging("INFO", json_path)
    with captured_logs() as logs:
        logger.info("回调 http://hooks.example.com/h?token=s3cret&x=1 与 https://a.example/p?k=v#f")
        logging.getLogger("httpx").warning("POST http://b.example/cb?sig=abc 失败")
    text = json_path.read_text(encoding="utf-8")
    for message in [r["message"] for r in logs] + [text]:
        assert "s3cret" not in message and "k=v" not in message and "sig=abc" not in message
    assert "http://hooks.example.com/h?<已隐去>" in logs[0]["message"]


def test_http_clients_do_not_log_every_request() -> None:
    """httpx 与 OpenAI SDK 的 httpx2 分支每个请求一行 INFO：与阶段日志重复，不输出；警告照常。"""
    configure_logging("INFO")
    with captured_logs() as logs:
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).info("HTTP Request: POST http://127.0.0.1:9/v1 200 OK")
            logging.getLogger(name).warning(f"{name} 重试")
    assert [r["message"] for r in logs] == ["httpx 重试", "httpx2 重试"]


def test_tracebacks_carry_no_local_variable_values(tmp_path: Path) -> None:
    json_path = tmp_path / "jobs.jsonl"
    configure_logging("INFO", json_path)

    def fail(secret_value: str) -> None:
        raise RuntimeError(f"失败（{len(secret_value)}）")

    secret = "hunter" + "2-secret"  # 源码里没有这个值：只有打印变量才会写出它
    try:
        fail(secret)
    except RuntimeError:
        logger.exception("出错了")
    assert "hunter2-secret" not in json_path.read_text(encoding="utf-8")


class _LineProxy:
    """像 Serve 的 StreamToLogger：有 write，却不是文本流。"""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        return None


def test_proxied_stderr_is_bypassed(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    proxy = _LineProxy()
    monkeypatch.setattr("sys.stderr", proxy)
    configure_logging("INFO")
    logger.info("直接写进程的 stderr")
    assert proxy.lines == []
    assert "直接写进程的 stderr" in capfd.readouterr().err


def test_real_text_stream_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO")
    logger.info("写进当前的 sys.stderr")
    assert "写进当前的 sys.stderr" in stream.getvalue()
