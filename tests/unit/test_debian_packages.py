"""cluster/debian_packages：不是 root 时说明怎么手动装，不去碰 apt-get。"""

from __future__ import annotations

from typing import Any

import pytest

from cluster import debian_packages


def test_not_root_says_how_to_install_and_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_apt(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("不是 root 时不应运行 apt-get")

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setattr("subprocess.run", no_apt)
    with pytest.raises(debian_packages.PackageMissing) as info:
        debian_packages.install("postgresql", "测试要用真实的 Postgres")
    assert "sudo apt-get install -y postgresql" in str(info.value)
    assert "测试要用真实的 Postgres" in str(info.value)


def test_a_failed_apt_get_is_reported_with_its_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failed:
        returncode = 100
        stderr = "E: Unable to locate package nosuchpkg\n"

    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda _name: "/usr/bin/apt-get")
    monkeypatch.setattr("subprocess.run", lambda *_a, **_k: Failed())
    with pytest.raises(debian_packages.PackageMissing) as info:
        debian_packages.install("nosuchpkg", "演示")
    assert "Unable to locate package nosuchpkg" in str(info.value)
