"""The comparison of jobs: what `wtb compare`, `wtb report` and the end-of-sweep table show.

One row per job (the newest run of each job number of each sweep: a retried job counts
once), or per job and case. A row's `params` are the job's overrides as a dict; tables show
only the params that vary across the rows. A job row's `stats` describe each metric and score
over its cases x trials (wtb_conf.results.stats); `best` marks the job that is ahead on
`compare.objective` by a paired test (wtb_conf.results.judge, docs/compare.md). Rows are plain
dicts: the documented JSON (`_values`, the raw values the statistics came from, stays out).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from wtb_conf.config.models import RATES
from wtb_conf.results import stats
from wtb_conf.results.judge import judge
from wtb_conf.store import Store, StoreError
from wtb_conf.trials import split_key

# what a job row has and its per-case rows do not: the statistics over its cases
PER_JOB = ("_values", "stats", "vs_next", "trials")


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
        "baseline": (evaluation or {}).get("compare", {}).get("baseline"),
        "gate_texts": (evaluation or {}).get("compare", {}).get("gates") or [],
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
    """The comparison rows of these sweeps (`cases`: per job and case), in sweep and job
    order, with `best` marked, and a note when no best job can be named although an
    objective is set."""
    jobs, case_rows, note = rows_and_cases(store, sweep_ids, cases)
    return (case_rows if cases else jobs), note


def rows_and_cases(store: Store, sweep_ids: list[str], cases: bool = True,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """The job rows, their per-case rows (with `cases`; else []) and the note, made once."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for run in store.compare_runs(sweep_ids):  # oldest first: a retry replaces its job's run
        latest[(run["sweep_id"], run["job_num"])] = run
    evaluations = store.latest_evaluations(sweep_ids)
    order = {s: i for i, s in enumerate(sweep_ids)}
    out = [_row(run, evaluations.get(run["run_id"]))
           for _, run in sorted(latest.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))]
    failed: dict[str, list[dict[str, Any]]] = {}
    if any(r["status"] == "failed" for r in out):  # where each failed job failed
        for t in store.compare_cases(sweep_ids, failed_only=True):
            failed.setdefault(t["run_id"], []).append(t)
    for r in out:
        _add_stats(r, latest[(r["sweep_id"], r["job_num"])], evaluations.get(r["run_id"]),
                   failed.get(r["run_id"], []))
    note = judge(out)
    case_rows = []
    if cases:
        runs = {run["run_id"]: run for run in latest.values()}
        case_rows = _case_rows(store, sweep_ids, out, runs, evaluations)
    for r in out:  # (after the case rows, which have their own failures)
        if r["status"] == "failed":
            r["failed_cases"] = [{k: t[k] for k in ("case", "failed_node", "error")}
                                 for t in failed.get(r["run_id"], [])]
    return out, case_rows, note


def unit_values(run: dict[str, Any], evaluation: dict[str, Any] | None,
                failed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{name: {key: value}}: every metric and score of each thread (`CASE` or
    `CASE/TRIAL`) of a run, its pass rate (the share of its checks that passed) and whether
    it completed (success_rate): the values the statistics are made of."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in run["metrics"].items():
        key, slash, metric = name.rpartition("/")
        if slash:
            out.setdefault(metric, {})[key] = value
    success = out.setdefault("success_rate", {})
    for key, case in ((evaluation or {}).get("cases") or {}).items():
        checks = []
        for name, value in case["scores"].items():
            out.setdefault(name, {})[key] = value
            if isinstance(value, bool):
                checks.append(value)
        if checks:
            out.setdefault("pass_rate", {})[key] = sum(checks) / len(checks)
        success[key] = True
    for t in failed:
        success[t["case"]] = False
    return {name: values for name, values in out.items() if values}


def _add_stats(row: dict[str, Any], run: dict[str, Any], evaluation: dict[str, Any] | None,
               failed: list[dict[str, Any]]) -> None:
    row["_values"] = values = unit_values(run, evaluation, failed)
    row["stats"] = {name: d for name, v in values.items() if (d := stats.describe(v))}
    threads = values.get("success_rate", {})
    row["trials"] = max((split_key(k)[1] + 1 for k in threads), default=1)
    # a failed job's values are over the cases that completed: shown, never ranked
    row["partial"] = row["status"] == "failed" and bool(values)


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
            out.append({**{k: v for k, v in job.items() if k not in PER_JOB}, "case": None,
                        "trial": None, "failed_node": None})
        for t in found:
            prefix = f"{t['case']}/"
            out.append({
                **{k: v for k, v in job.items() if k not in PER_JOB},
                "case": t["case"], "trial": split_key(t["case"])[1],
                "status": "cached" if job["cached_from"] else t["status"],
                "error": t["error"], "failed_node": t["failed_node"],
                "metrics": {k[len(prefix):]: v for k, v in metrics.items()
                            if k.startswith(prefix)},
                "scores": scored.get(t["case"], {}).get("scores", {}),
                "score_errors": scored.get(t["case"], {}).get("errors", {}),
                "pass_rate": None, "success_rate": None,
            })
    return out


def add_baseline(rows: list[dict[str, Any]], baseline: list[dict[str, Any]],
                 by_params: bool) -> None:
    """`delta` per row: each numeric metric, score and rate minus the baseline's. The
    baseline is one run's rows (`by_params` false: every row against it) or a sweep's
    (matched by params); per case rows are matched case to case. A job row also gets
    `vs_baseline`: per name, the paired test on the (case, trial) pairs both have, its
    Holm-adjusted p over every test of the table (`p_holm`) and `significant`."""

    def key(row: dict[str, Any]) -> tuple[str, Any]:
        return (json.dumps(row["params"], sort_keys=True) if by_params else "",
                row.get("case"))

    bases = {key(b): b for b in baseline}
    asked: list[tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]]] = []
    for row in rows:
        base = bases.get(key(row))
        row["delta"] = {} if base is None or base["run_id"] == row["run_id"] else {
            name: v - b for name in numeric_columns([row, base])
            if (v := number(value_of(row, name))) is not None
            and (b := number(value_of(base, name))) is not None}
        row["baseline_run"] = base and base["run_id"]
        if "_values" not in row:
            continue
        row["vs_baseline"] = {}
        if base is None or base["run_id"] == row["run_id"]:
            continue
        asked += [(row, name, values, base["_values"].get(name, {}))
                  for name, values in row["_values"].items()]
    tests = []
    for (row, name, _, _), test in zip(asked, stats.paired_many([a[2:] for a in asked]),
                                       strict=True):
        if test is not None:
            row["vs_baseline"][name] = test
            tests.append(test)
    for test, p in zip(tests, stats.holm([t["p"] for t in tests]), strict=True):
        test.update(p_holm=p, significant=p < stats.ALPHA)


def baseline_rows(store: Store, jobs: list[dict[str, Any]], ref: str,
                  cases: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """The rows `--baseline REF` (or compare.baseline) names, and whether they are matched
    by params: a job number of the table, `KEY=VALUE ...` (the one job with those params), a
    run id or a sweep id (its jobs, matched to these by params)."""
    words = ref.split()
    if ref.isdigit() or all("=" in w for w in words):
        if ref.isdigit():
            found = [r for r in jobs if r["job_num"] == int(ref)]
        else:
            found = [r for r in jobs if all(_param(r, *w.split("=", 1)) for w in words)]
        if len(found) != 1:
            raise StoreError(_no_single(ref, found, jobs))
        return [r for r in jobs if r["run_id"] == found[0]["run_id"]], False
    kind, found_id = store.run_or_sweep(ref)
    sweep = store.run(found_id)["sweep_id"] if kind == "run" else found_id
    base = [r for r in rows(store, [sweep], cases)[0]
            if kind == "sweep" or r["run_id"] == found_id]
    if not base:
        raise StoreError(f"baseline {ref}: run {found_id[:8]} is not the newest run of its job; "
                         "name that one")
    return base, kind == "sweep"


def _param(row: dict[str, Any], key: str, value: str) -> bool:
    labels = short_names(list(row["params"]))
    return any(v == value and key in (k, labels[k]) for k, v in row["params"].items())


def _no_single(ref: str, found: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    jobs = sorted({r["job_num"] for r in found})
    if ref.isdigit():
        return (f"baseline {ref}: {'no job' if not jobs else f'{len(jobs)} sweeps have a job'} "
                f"{ref}; valid: a job number of the table "
                f"({', '.join(str(r['job_num']) for r in rows)}) or a run id")
    if not found:
        params = varying_params(rows)
        valid = "; ".join(f"{k}: {', '.join(sorted({str(r['params'].get(k)) for r in rows}))}"
                          for k in params) or "no param varies"
        return f"baseline {ref}: no job has those params; valid values: {valid}"
    return (f"baseline {ref}: {len(found)} jobs ({', '.join(map(str, jobs))}) have those "
            "params; add another KEY=VALUE to pick one, or give a job number")


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
