"""Postgres 账本副本记住的行：它正在处理的作业的最新行与解析好的作业。

作业路径上的下一次操作直接拿记住的行判定、以它的 version 为条件写，省掉一次读；别人改过
（取消、接手、交还）则条件写落空，存储忘掉它、重读再判——所以它只省读，不会写错。
"""

from __future__ import annotations

from psycopg.rows import DictRow

from serve_app.ledger import rules
from serve_app.ledger.rows import Row
from serve_app.models.reports import ReportJob

_SETTLED = frozenset(str(s) for s in rules.SETTLED_CALLBACKS)
_FINISHED = frozenset(str(s) for s in rules.FINISHED_STATES)


class RowMemory:
    """trace_id → 最新的行（最近用到的排在最后，超过 limit 忘掉最久没用的）与解析好的作业。"""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.rows: dict[str, DictRow] = {}
        # 记住的行的作业（job_json 建立后不变），与行一起记、一起忘
        self.jobs: dict[str, ReportJob] = {}

    def remember(self, *rows: DictRow) -> None:
        """记住这些行的最新版本；结束了的作业（终态且回调已了结）不再记。"""
        for row in rows:
            trace_id = row["trace_id"]
            if row["cb_state"] in _SETTLED and row["state"] in _FINISHED:
                self.forget(trace_id)
                continue
            self.rows.pop(trace_id, None)
            self.rows[trace_id] = row
            if len(self.rows) > self._limit:
                self.forget(next(iter(self.rows)))

    def remember_jobs(self, jobs: list[ReportJob]) -> None:
        """刚插入的作业（行已记住）：它们的解析结果也记下，之后不再解析 job_json。"""
        self.jobs.update({job.trace_id: job for job in jobs if job.trace_id in self.rows})

    def forget(self, trace_id: str) -> None:
        """忘掉一个作业记住的行与作业（两者一起，不留下没有行的作业）。"""
        self.rows.pop(trace_id, None)
        self.jobs.pop(trace_id, None)

    def job_of(self, row: Row) -> ReportJob:
        """这一行的作业：记住了就直接用，否则解析 job_json（并记住，行还记着时）。"""
        trace_id = row["trace_id"]
        job = self.jobs.get(trace_id)
        if job is None:
            job = ReportJob.model_validate_json(row["job_json"])
            if trace_id in self.rows:
                self.jobs[trace_id] = job
        return job
