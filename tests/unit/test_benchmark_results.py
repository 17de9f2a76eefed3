"""基准的结果文件：一次运行一组带时间戳的 JSON / 表 / 图，另存一份 -latest（docs 引用带时间的）。"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.common import ResultFiles


def test_a_result_set_writes_json_table_and_plot_and_publishes_latest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = ResultFiles("probe", tmp_path, stamp="20261207T000000")
    plotted: list[Path] = []

    def plot(png: Path) -> None:
        plotted.append(png)
        png.write_bytes(b"\x89PNG")

    data = {"meta": {"command": "make bench-probe"}, "rows": [{"中文": 1.5}]}
    path = files.save(data, ["# 标题（20261207T000000）", "", "| a |", ""], plot, echo=True)

    assert path == tmp_path / "probe-20261207T000000.json"
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert "中文" in path.read_text(encoding="utf-8")  # 不转义成 \\uXXXX：人也读这个文件
    table = (tmp_path / "probe-20261207T000000.md").read_text(encoding="utf-8")
    # 表以恰好一个换行结尾（各基准以前有的多一个空行、有的少一个）
    assert table == "# 标题（20261207T000000）\n\n| a |\n"
    assert plotted == [tmp_path / "probe-20261207T000000.png"]
    for suffix in ("json", "md", "png"):
        stamped = (tmp_path / f"probe-20261207T000000.{suffix}").read_bytes()
        assert (tmp_path / f"probe-latest.{suffix}").read_bytes() == stamped
    assert capsys.readouterr().out == table


def test_a_result_set_is_quiet_unless_asked_and_stamps_itself_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = ResultFiles("probe", tmp_path)
    # 时间戳在创建时定下：写表之前就能放进标题，存下的文件名与它一致
    assert len(files.stamp) == len("20261207T000000") and files.stamp[8] == "T"
    path = files.save({}, ["| a |"], Path.touch)
    assert path.name == f"probe-{files.stamp}.json"
    assert capsys.readouterr().out == ""
