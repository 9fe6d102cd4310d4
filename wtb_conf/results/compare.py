"""The comparison of jobs: what `wtb compare`, `wtb report` and the end-of-sweep table show.

One row per job (the newest run of each job number of each sweep: a retried job counts
once), or per job and case. A row's `params` are the job's overrides as a dict; tables show
only the params that vary across the rows. `best` marks the completed job with the best value
of `compare.objective` (docs/compare.md). Rows are plain dicts: the documented JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from wtb_conf.config.models import RATES
from wtb_conf.store import Store, StoreError
from wtb_conf.store.lifecycle import DONE


def params_of(overrides: Iterable[str]) -> dict[str, str]:
    """`variant=a +x.y=1` -> {"variant": "a", "x.y": "1"} (a deletion `~k` has no value)."""
    out = {}
    for item in overrides:
        key, eq, value = item.partition("=")
        if eq:
            out[key.lstrip("+~")] = value
    return out


def _seconds(run: dict[str, Any]) -> float | None:
    if not run["finished_at"]:
        return None
    delta = datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(
        run["started_at"])
    return round(delta.total_seconds(), 3)


def _row(run: dict[str, Any], evaluation: dict[str, Any] | None) -> dict[str, Any]:
    summary = evaluation["summary"] if evaluation else {}
    return {
        "run_id": run["run_id"], "sweep_id": run["sweep_id"], "job_num": run["job_num"],
        "params": params_of(run["overrides"]), "status": run["status"],
        "duration_s": _seconds(run),
        "metrics": {k: v for k, v in run["metrics"].items() if "/" not in k},
        "scores": summary.get("scores", {}), "score_errors": summary.get("errors", {}),
        "pass_rate": summary.get("pass_rate"), "success_rate": summary.get("success_rate"),
        "objective": (evaluation or {}).get("compare", {}).get("objective"),
        "mode": (evaluation or {}).get("compare", {}).get("mode", "max"),
        "error": run["error"], "commit": run["commit"], "cached_from": run["cached_from"],
        "parent_run": run["parent_run"], "best": False,
    }


def value_of(row: dict[str, Any], name: str) -> Any:
    """A row's value for a column name: a score, a metric, a rate, a param or a field."""
    for group in ("scores", "metrics", "params"):
        if name in row.get(group, {}):
            return row[group][name]
    return row.get(name)


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def rows(store: Store, sweep_ids: list[str],
         cases: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    """The comparison rows of these sweeps, in sweep and job order, with `best` marked, and a
    note when no best job can be named although an objective is set."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for run in store.compare_runs(sweep_ids):  # oldest first: a retry replaces its job's run
        latest[(run["sweep_id"], run["job_num"])] = run
    evaluations = store.latest_evaluations(sweep_ids, cases=cases)
    order = {s: i for i, s in enumerate(sweep_ids)}
    out = [_row(run, evaluations.get(run["run_id"]))
           for _, run in sorted(latest.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))]
    note = mark_best(out)
    if cases:
        runs = {run["run_id"]: run for run in latest.values()}
        out = _case_rows(store, sweep_ids, out, runs, evaluations)
    elif any(r["status"] == "failed" for r in out):  # where each failed job failed
        failed: dict[str, list[dict[str, Any]]] = {}
        for t in store.compare_cases(sweep_ids, failed_only=True):
            failed.setdefault(t["run_id"], []).append(t)
        for r in out:
            r["failed_cases"] = [{k: t[k] for k in ("case", "failed_node", "error")}
                                 for t in failed.get(r["run_id"], [])]
    return out, note


def _case_rows(store: Store, sweep_ids: list[str], jobs: list[dict[str, Any]],
               runs: dict[str, dict[str, Any]],
               evaluations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    threads: dict[str, list[dict[str, Any]]] = {}
    for t in store.compare_cases(sweep_ids):
        threads.setdefault(t["run_id"], []).append(t)
    # cache hits of runs of other sweeps: their cases, in one more query
    elsewhere = {j["cached_from"] for j in jobs if j["cached_from"]} - set(threads)
    for t in store.compare_cases(run_ids=elsewhere) if elsewhere else []:
        threads.setdefault(t["run_id"], []).append(t)
    out = []
    for job in jobs:
        # a cache hit ran nothing: its cases are those of the run it reused
        source = job["cached_from"] or job["run_id"]
        scored = (evaluations.get(job["run_id"]) or {}).get("cases", {})
        metrics = runs[job["run_id"]]["metrics"]
        found = threads.get(source, [])
        if not found:  # it failed before any case started: the job's own row says why
            out.append({**job, "case": None, "failed_node": None})
        for t in found:
            prefix = f"{t['case']}/"
            out.append({
                **job,
                "case": t["case"], "status": "cached" if job["cached_from"] else t["status"],
                "error": t["error"], "failed_node": t["failed_node"],
                "metrics": {k[len(prefix):]: v for k, v in metrics.items()
                            if k.startswith(prefix)},
                "scores": scored.get(t["case"], {}).get("scores", {}),
                "score_errors": scored.get(t["case"], {}).get("errors", {}),
                "pass_rate": None, "success_rate": None,
            })
    return out


def mark_best(rows: list[dict[str, Any]]) -> str | None:
    """Mark the completed row with the best objective value; a note when none can be."""
    objectives = {(r["objective"], r["mode"]) for r in rows if r["objective"]}
    if not objectives:
        return None
    if len(objectives) > 1:
        return ("no best job: the rows have different objectives "
                f"({', '.join(sorted(f'{o} ({m})' for o, m in objectives))})")
    (objective, mode), = objectives
    scored = [(v, i) for i, r in enumerate(rows)
              if r["status"] in DONE and (v := number(value_of(r, objective))) is not None]
    if not scored:
        keys = sorted({k for r in rows for k in r["scores"] if k.startswith(objective + ".")})
        return (f"no best job: no completed job has a value for {objective}"
                + (f"; its evaluator returns a dict: name one of {', '.join(keys)}"
                   if keys else ""))
    sign = 1 if mode == "max" else -1
    # ties go to the first job, so the same store always names the same best job
    _, best = max(scored, key=lambda vi: (sign * vi[0], -vi[1]))
    rows[best]["best"] = True
    return None


def add_baseline(rows: list[dict[str, Any]], baseline: list[dict[str, Any]],
                 by_params: bool) -> None:
    """`delta` per row: each numeric metric, score and rate minus the baseline's. The
    baseline is one run's rows (`by_params` false: every row against it) or a sweep's
    (matched by params); per case rows are matched case to case."""

    def key(row: dict[str, Any]) -> tuple[str, Any]:
        return (json.dumps(row["params"], sort_keys=True) if by_params else "",
                row.get("case"))

    bases = {key(b): b for b in baseline}
    for row in rows:
        base = bases.get(key(row))
        row["delta"] = {} if base is None else {
            name: v - b for name in numeric_columns([row, base])
            if (v := number(value_of(row, name))) is not None
            and (b := number(value_of(base, name))) is not None}
        row["baseline_run"] = base and base["run_id"]


def numeric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Metric, score and rate names, in table order."""
    metrics = sorted({k for r in rows for k in r["metrics"]})
    scores = sorted({k for r in rows for k in r["scores"]})
    rates = [k for k in RATES if any(r.get(k) is not None for r in rows)]
    return metrics + [s for s in scores if s not in metrics] + rates


def varying_params(rows: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    return [k for k in keys if len({r["params"].get(k) for r in rows}) > 1]


def short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its shortest unique suffix: `workflow.routes.v.max_invalid` ->
    `max_invalid` (headers that fit a terminal)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if sum(k == label or k.endswith("." + label) for k in keys) == 1:
                break
        out[key] = label
    return out


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Sorted by a column (`-KEY`: descending); rows without a value go last."""
    name, reverse = key.lstrip("-"), key.startswith("-")
    labels = {label: param for param, label in short_names(varying_params(rows)).items()}
    name = name if any(value_of(r, name) is not None for r in rows) else labels.get(name, name)
    if not any(value_of(r, name) is not None for r in rows):
        known = ["job_num", "status", "duration_s", *varying_params(rows),
                 *numeric_columns(rows)]
        raise StoreError(f"--sort {key}: no row has a {name!r}; sort by one of "
                         f"{', '.join(known)}")
    have = [r for r in rows if value_of(r, name) is not None]
    have.sort(key=lambda r: (number(value_of(r, name)) is None,
                             number(value_of(r, name)) or 0, str(value_of(r, name))),
              reverse=reverse)
    return have + [r for r in rows if value_of(r, name) is None]
