"""/docs 在没有外网的机器上也能用：真实的无头 Chromium（Debian 包）打开入口应用的 /docs。

Chromium 的主机名解析只放行 127.0.0.1（其余一律“找不到”）：页面若还从 CDN 取脚本，就渲染
不出任何东西，这里失败。断言的是渲染后的 DOM：每个操作（按 operationId）与回调（webhooks）一节。
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster import debian_packages
from tests.support.asgi_server import ServedApp
from tests.support.harness import Harness

OPERATIONS = (
    "submit_report",
    "get_report",
    "cancel_report",
    "redeliver_report",
    "list_report_types",
    "list_undelivered",
    "healthz",
    "readyz",
)
CALLBACK = "report_callback"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian 的 chromium：没有就以 root 安装（CI 的新机器上没有）。"""
    if shutil.which("chromium") is None:
        debian_packages.install("chromium", "浏览器测试要用真实的无头 Chromium")
    path = shutil.which("chromium")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    harness = Harness()
    try:
        with ServedApp(harness.app, "入口应用") as app:
            yield app
    finally:
        # 账本的线程与连接经 Harness 自己关掉
        asyncio.run(harness.aclose())


def _rendered_dom(chromium: str, url: str, profile: Path) -> str:
    """无头 Chromium 执行完页面脚本后的 DOM（只许连 127.0.0.1）。"""
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            # 除了本机一律解析失败：CDN 上的资源取不到（模拟内网 / 断网）
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_docs_assets_are_served_by_the_app(served: ServedApp) -> None:
    page = httpx.get(f"{served.url}/docs", timeout=10).text
    assert "cdn." not in page and "jsdelivr" not in page, page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f'/static-offline-docs/{asset}"' in page, page
        assert httpx.get(f"{served.url}/static-offline-docs/{asset}", timeout=10).status_code == 200


def test_swagger_ui_renders_every_operation_and_the_callback_offline(
    chromium: str, served: ServedApp, tmp_path: Path
) -> None:
    dom = _rendered_dom(chromium, f"{served.url}/docs", tmp_path / "profile")
    # Swagger UI 给每个渲染出的操作一个 id="operations-<标签>-<operationId>"
    rendered = {m.rsplit("-", 1)[-1] for m in re.findall(r'id="operations-([^"]+)"', dom)}
    missing = {*OPERATIONS, CALLBACK} - rendered
    assert not missing, f"/docs 没有渲染出 {sorted(missing)}：{dom[:2000]}"
    # OpenAPI 3.1 的 webhooks：backend B 收到的回调
    assert "<h2>Webhooks</h2>" in dom and 'data-path="report-callback"' in dom


def test_redoc_renders_offline(chromium: str, served: ServedApp, tmp_path: Path) -> None:
    dom = _rendered_dom(chromium, f"{served.url}/redoc", tmp_path / "profile")
    assert "submit_report" in dom or "/v1/reports" in dom, dom[:3000]


def test_operation_ids_are_the_handler_names(served: ServedApp) -> None:
    spec = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert ids == set(OPERATIONS)
    assert spec["webhooks"]["report-callback"]["post"]["operationId"] == CALLBACK
