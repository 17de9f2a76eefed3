"""基准的结果文件：一次运行一组带时间戳的 JSON / 表 / 图，另存一份 -latest（docs 引用带时间的）。"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.common import ResultFiles
from benchmarks.overhead import SEED, Measurement, side_by_side


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


def _measured(system: str, e2e_ms: float, *, gap_ms: float = 0.0, **cpu: float) -> Measurement:
    # 100 份、对照组 1 秒、别的 2 秒：报告/秒 100 对 50
    seconds = 1.0 if system == SEED else 2.0
    return Measurement(
        system, 1, 100, seconds, 0, 1.0, 2.0, e2e_ms, cpu_ms_per_report=cpu, gap_ms=gap_ms
    )


def test_the_overhead_table_sets_each_system_beside_the_control_at_the_same_load() -> None:
    """issue #27 第 3 条的三个数直接从基准的表里读：报告/秒的倍数、多出的延迟、控制面合计 CPU。"""
    runs = [
        _measured(SEED, 3.0, engine=0.3),
        _measured(SEED, 6.0, gap_ms=20, engine=0.3),
        _measured("pipeline", 15.5, ReportIngress=8.0, Ledger=5.0, proxy=1.0, engine=0.5),
        _measured("pipeline", 16.4, gap_ms=20, ReportIngress=9.0, engine=0.5),
        # 对照组没测的一档不并排
        _measured("pipeline", 5.0, gap_ms=200, ReportIngress=9.0),
    ]
    lines = side_by_side(runs)
    rows = [line for line in lines if line.startswith("| pipeline")]
    # 零成本引擎不算控制面；每份前空闲的那档不写倍数（报告/秒主要是空闲的间隔）
    assert rows == [
        "| pipeline | 1 | 0.50 | 12.5 | 14.0 |",
        "| pipeline | 1，每份前空闲 20 ms | — | 10.4 | 9.0 |",
    ]
    assert side_by_side([runs[2]]) == []  # 没测对照组：不写这一节
