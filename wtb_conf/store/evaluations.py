"""Evaluations: the scores a run's evaluators gave its cases, kept as a history per run.

A run is scored when it ends and may be scored again later (`wtb evaluate`) without running
anything; every scoring is a new row and the newest one counts. What an evaluation holds is
described in docs/compare.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, text

from wtb_conf.store.objects import now_iso
from wtb_conf.store.record_types import (
    CaseOutcome,
    CompareRun,
    Evaluation,
    EvaluationSource,
    ThreadStatus,
)
from wtb_conf.store.records import _dumps, _event, new_id
from wtb_conf.store.schema import read_conn

EVALUATION_SOURCES = tuple(EvaluationSource)  # scored when it ran, copied, or re-scored


def _evaluation_dict(row) -> Evaluation:
    return {"evaluation_id": row.id, "run_id": row.run_id, "created_at": row.created_at,
            "source": row.source, "eval_key": row.eval_key, "compare": json.loads(row.compare),
            "cases": json.loads(row.cases), "summary": json.loads(row.summary)}


def _bound(ids: Iterable[str]) -> tuple[str, dict[str, str]]:
    """`:s0, :s1, ...` and their values, for `IN (...)` with bound parameters."""
    params = {f"s{i}": v for i, v in enumerate(ids)}
    return ", ".join(f":{k}" for k in params) or "NULL", params


class EvaluationRecords:
    """Writes and queries of evaluations; mixed into Store."""

    engine: Engine

    def add_evaluation(self, run_id: str, source: EvaluationSource | str, eval_key: str,
                       compare: dict[str, Any],
                       cases: dict[str, Any], summary: dict[str, Any]) -> str:
        """Record one scoring of a run. `cases`: {case: {"scores": {...}, "errors": {...}}};
        `summary`: the run's aggregates (scoring.summarize); `compare`: objective and mode."""
        if source not in EVALUATION_SOURCES:
            raise ValueError(f"evaluation source {source!r} is not one of "
                             f"{tuple(s.value for s in EvaluationSource)}")
        evaluation_id = new_id()
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO evaluations (id, run_id, created_at, source, eval_key, "
                     "compare, cases, summary) VALUES (:id, :r, :at, :src, :k, :cmp, :cases, "
                     ":summary)"),
                {"id": evaluation_id, "r": run_id, "at": now_iso(), "src": source,
                 "k": eval_key, "cmp": _dumps(compare), "cases": _dumps(cases),
                 "summary": _dumps(summary)})
            _event(conn, "evaluated", {"evaluation_id": evaluation_id, "source": source,
                                       "scores": summary.get("scores")}, run_id=run_id)
        return evaluation_id

    def evaluations(self, run_id: str) -> list[Evaluation]:
        """Every evaluation of a run, newest first."""
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT * FROM evaluations WHERE run_id = :r "
                     "ORDER BY created_at DESC, id"), {"r": run_id})
            return [_evaluation_dict(r) for r in rows]

    def latest_evaluations(self, sweep_ids: Iterable[str],
                           cases: bool = True) -> dict[str, Evaluation]:
        """The newest evaluation of every run of these sweeps, by run id; `cases=False`
        leaves the per-case scores out (a comparison of jobs does not need them)."""
        marks, params = _bound(sweep_ids)
        newest = {}
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT e.run_id, e.id, e.created_at, e.source, e.eval_key, e.compare, "
                     f"e.summary{', e.cases' if cases else ''} FROM evaluations e "
                     f"JOIN runs r ON r.id = e.run_id WHERE r.sweep_id IN ({marks}) "
                     "ORDER BY e.created_at, e.id"), params)
            for row in rows:  # oldest first: the newest one stays, and only it is decoded
                newest[row[0]] = row
        loads = json.loads
        return {run_id: {"evaluation_id": r[1], "run_id": run_id, "created_at": r[2],
                         "source": r[3], "eval_key": r[4], "compare": loads(r[5]),
                         "summary": loads(r[6]), "cases": loads(r[7]) if cases else {}}
                for run_id, r in newest.items()}

    def compare_runs(self, sweep_ids: Iterable[str]) -> list[CompareRun]:
        """What `wtb compare` needs of the runs of these sweeps, in one query (it must stay
        fast on a store of 10,000 runs): no configs, no checkpoint counts."""
        marks, params = _bound(sweep_ids)
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT id, sweep_id, job_num, status, overrides, workflow, started_at, "
                     "finished_at, error, metrics, commit_id, cached_from, parent_run "
                     f"FROM runs WHERE sweep_id IN ({marks}) ORDER BY started_at, job_num"),
                params)
            loads = json.loads  # by position, not by name: SQLAlchemy's named access costs
            return [{"run_id": i, "sweep_id": s, "job_num": j, "status": st,
                     "overrides": loads(o), "workflow": w, "started_at": sa,
                     "finished_at": fa, "error": e, "metrics": loads(m) if m else {},
                     "commit": c, "cached_from": cf, "parent_run": p}
                    for i, s, j, st, o, w, sa, fa, e, m, c, cf, p in rows]

    def compare_cases(self, sweep_ids: Iterable[str] = (), failed_only: bool = False,
                      run_ids: Iterable[str] = ()) -> list[CaseOutcome]:
        """Every case thread of the runs of these sweeps, or of these runs (or only the failed
        ones): status, error, the node it failed in (`wtb compare`)."""
        if run_ids:
            marks, params = _bound(run_ids)
            where = f"t.run_id IN ({marks})"
        else:
            marks, params = _bound(sweep_ids)
            where = f"r.sweep_id IN ({marks})"
        failed = ""
        if failed_only:
            failed, params["failed"] = " AND t.status = :failed", ThreadStatus.FAILED
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT t.run_id, t.case_name, t.status, t.error, t.failed_node, "
                     "t.commit_id FROM threads t JOIN runs r ON r.id = t.run_id "
                     f"WHERE {where}{failed} ORDER BY t.case_name"), params)
            return [{"run_id": r.run_id, "case": r.case_name, "status": r.status,
                     "error": r.error, "failed_node": r.failed_node, "commit": r.commit_id}
                    for r in rows]
