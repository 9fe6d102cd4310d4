"""`wtb report`: one self-contained HTML file about sweeps, to open from disk or mail around.

Everything is inline (styles, a few lines of script for sorting, charts as SVG drawn by
matplotlib), and a Content-Security-Policy forbids loading anything else, so the file
fetches nothing when opened. Per-run detail stays compact (file lists collapsed and capped)
so a 200-job sweep stays a few MB.

The page is templates/report.html.j2 (with report.css and report.js), rendered by Jinja2
with autoescape on: every value this module hands it is plain data, escaped where it lands;
only the charts' SVG, which matplotlib wrote and escaped itself, goes in as markup.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wtb_conf.results import cases_view, charts, compare, gates, table
from wtb_conf.store import Store

if TYPE_CHECKING:
    import jinja2

MAX_FILES = 40  # files listed per run; the restore command gives the rest
MAX_TRACEBACK = 20_000  # characters per traceback kept in the page
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:")
DURATION_NOTE = (
    "A node's duration is approximate: the time from the previous event of its case (usually "
    "the commit of the step before) to the event logged when the node finished, so it includes "
    "LangGraph's own work between steps; nodes that ran in the same step share that time. A "
    "cache hit shows the durations of the run it reused.")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _size(n: int) -> str:
    return f"{n} B" if n < 1000 else f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def _short(run_id: str | None) -> str:
    return (run_id or "")[:8]


def _wbr(text: str) -> Any:
    """A header that may wrap after `.` and `_`, so a wide table still fits a screen."""
    from markupsafe import Markup, escape

    return Markup(str(escape(text)).replace(".", ".<wbr>").replace("_", "_<wbr>"))


@functools.cache
def _environment() -> jinja2.Environment:
    import jinja2  # only `wtb report` needs it

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("wtb_conf.results", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ms=_ms, size=_size, short=_short, fmt=table.fmt, wbr=_wbr)
    return env


def _label(row: dict[str, Any], params: list[str], several: bool) -> str:
    values = " · ".join(str(row["params"].get(p, "")) for p in params)
    prefix = f"{_short(row['sweep_id'])}/" if several else ""
    text = f"{prefix}#{row['job_num']} {values}".strip()
    return text if len(text) <= 48 else text[:47] + "…"


def node_durations(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds per node call, by node (cases_view.node_calls)."""
    out: dict[str, list[float]] = {}
    for _, node, seconds in cases_view.node_calls(events):
        out.setdefault(node, []).append(seconds)
    return out


def _table(rows: list[dict[str, Any]], params: list[str], numbers: list[str],
           several: bool) -> dict[str, Any]:
    """The comparison table's headers and, per row, the cells that need computing."""
    names = compare.short_names(params)
    heads = (["sweep"] if several else []) + ["job", "run", *params, "status", "duration",
                                               *numbers, "best"]
    body = []
    for r in rows:
        values = []
        for name in numbers:
            v = compare.value_of(r, name)
            values.append(("" if compare.number(v) is None else repr(compare.number(v)),
                           table.cell(r, name)))
        # the error itself is in the failures section: in the table it would stretch the
        # status column off the screen
        body.append({
            "row": r, "params": [str(r["params"].get(p, "")) for p in params],
            "error": r["error"] or "", "status": r["status"], "values": values,
            "mark": table.mark(r),
            "cls": "failed" if r["status"] == "failed" else "best" if r["best"] else ""})
    return {"heads": [(h, names.get(h, h)) for h in heads], "rows": body}


def _durations(all_durations: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """Per node, over every run that executed it (a reused run counts once)."""
    runs: dict[str, list[list[float]]] = {}
    for d in all_durations.values():
        for node, secs in d.items():
            runs.setdefault(node, []).append(secs)
    return [{"node": node, "runs": len(r), "calls": len(s),
             "stats": (statistics.fmean(s), statistics.median(s), max(s), sum(s))}
            for node, r in runs.items() for s in [[x for secs in r for x in secs]]]


def _clip(text: str) -> str:
    if len(text) > MAX_TRACEBACK:
        text = f"… ({len(text) - MAX_TRACEBACK} characters left out)\n" + text[-MAX_TRACEBACK:]
    return text


def _problems(rows: list[dict[str, Any]], case_rows: list[dict[str, Any]]) -> list[str]:
    """compare's failure lines per case; per job for a job with no cases (it failed first)."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for c in case_rows:
        by_run.setdefault(c["run_id"], []).append(c)
    return table.failure_lines([c for r in rows for c in by_run.get(r["run_id"], [r])])


def _failed_jobs(rows: list[dict[str, Any]], threads: dict[str, list[dict[str, Any]]],
                 store: Store) -> list[dict[str, Any]]:
    """Each job that failed or has a failed case: its failed cases with their tracebacks."""
    out = []
    for r in rows:
        bad = [t for t in threads[r["run_id"]] if t["status"] == "failed"]
        if r["status"] != "failed" and not bad:
            continue
        # a job with no failed case failed before or outside any (a config error, a lost
        # process): its run's own traceback
        own = None if bad else _clip(store.run(r["run_id"])["traceback"]
                                     or "(no traceback recorded)")
        out.append({"row": r, "traceback": own, "cases": [
            {**t, "traceback": _clip(t["traceback"] or "")} for t in bad]})
    return out


def _how(row: dict[str, Any]) -> str:
    """How a run with a parent run came to be: its fork.* overrides say which time travel."""
    return ("rolled back from" if "fork.pause" in row["params"] else "forked from"
            if {"fork.checkpoint", "fork.after"} & set(row["params"]) else "resumed from")


def _run_section(r: dict[str, Any], label: str, threads: list[dict[str, Any]],
                 durations: dict[str, list[float]],
                 tree: dict[str, Any] | None) -> dict[str, Any]:
    cases = []
    for t in threads:
        parent_run, _, parent_case = (t["parent_thread"] or "").partition("/")
        cases.append({**t, "parent_run": parent_run, "parent_case": parent_case})
    files = None
    if tree is not None:
        files = {"count": len(tree), "size": sum(e.size for e in tree.values()),
                 "shown": [(p, e.size) for p, e in sorted(tree.items())[:MAX_FILES]],
                 "more": max(len(tree) - MAX_FILES, 0)}
    return {"row": r, "label": label, "how": _how(r) if r["parent_run"] else None,
            "forked_cases": any(t["parent_thread"] for t in threads), "cases": cases,
            "durations": [(n, sum(s), len(s)) for n, s in durations.items()], "files": files}


def _headline(rows: list[dict[str, Any]], sweep_ids: list[str], params: list[str],
              note: str | None) -> tuple[str, str]:
    """The page's heading (its sweeps) and the line under it (objective, best job)."""
    heading = (f"wtb report: sweep{'s' if len(sweep_ids) > 1 else ''} "
               f"{', '.join(_short(s) for s in sweep_ids)}")
    scored = next((r for r in rows if r["objective"]), None)
    if scored is None:
        return heading, "no objective set (compare.objective): no best job"
    sub = f"objective {scored['objective']} ({scored['mode']})"
    best = next((r for r in rows if r["best"]), None)
    if best is not None:
        chosen = " ".join(f"{k}={best['params'][k]}" for k in params if k in best["params"])
        sub += (f"; best: ★ job {best['job_num']} (run {_short(best['run_id'])}) {chosen} = "
                f"{table.fmt(compare.value_of(best, best['objective']))}")
    return heading, sub + (f"; {note}" if note else "")


def _gather(store: Store, rows: list[dict[str, Any]]) -> tuple[dict, dict, dict, dict]:
    """Per run its cases and node durations, per commit its files, per run that executed
    (a cache hit ran nothing itself) its events: a handful of ~1 ms queries a run."""
    threads, durations, trees, events = {}, {}, {}, {}
    for r in rows:
        source = r["cached_from"] or r["run_id"]
        if source not in events:
            events[source] = store.events(source)
        threads[r["run_id"]] = store.threads(source)
        durations[r["run_id"]] = node_durations(events[source])
        if r["commit"] and r["commit"] not in trees:
            trees[r["commit"]] = store.tree(r["commit"])
    return threads, durations, trees, events


def render(store: Store, sweep_ids: list[str]) -> str:
    """The report's HTML."""
    import matplotlib
    from markupsafe import Markup

    # the rows as `wtb compare --cases` judges them: with the sweeps' compare.baseline
    judged = gates.judged(store, sweep_ids, cases=True)
    rows, case_rows, note = judged.jobs, judged.rows, judged.note
    params = compare.varying_params(rows)
    several = len(sweep_ids) > 1
    labels = [_label(r, params, several) for r in rows]
    jobs = [f"{_short(r['sweep_id'])}/#{r['job_num']}" if several else f"#{r['job_num']}"
            for r in rows]
    threads, durations, trees, events = _gather(store, rows)
    # svg.fonttype none: labels stay <text>, not paths (smaller, selectable, searchable)
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 8}):
        figures = charts.interval_charts(rows, labels, jobs)
        stacked = charts.durations_chart([durations[r["run_id"]] for r in rows], labels, jobs)
    heading, sub = _headline(rows, sweep_ids, params, note)
    return _environment().get_template("report.html.j2").render(
        csp=CSP, heading=heading, sub=sub, rows=rows, several=several,
        counts=", ".join(f"{n} {s}" for s, n in Counter(r["status"] for r in rows).items()),
        sweeps=[(s, store.sweep(s)) for s in sweep_ids],
        problems=_problems(rows, case_rows),
        table=_table(rows, params, compare.numeric_columns(rows), several),
        charts=[Markup(svg) for svg in figures],  # matplotlib's own, escaped SVG
        stacked=stacked and Markup(stacked), duration_note=DURATION_NOTE,
        durations=_durations({run: node_durations(ev) for run, ev in events.items()}),
        failed_jobs=_failed_jobs(rows, threads, store), legend=table.legend(rows),
        cases=cases_view.build(store, rows, case_rows, threads, events, labels),
        job_labels=labels,
        known={r["run_id"] for r in rows},
        runs=[_run_section(r, label, threads[r["run_id"]], durations[r["run_id"]],
                           trees.get(r["commit"])) for r, label in zip(rows, labels, strict=True)])


def write_report(store: Store, sweep_ids: list[str], out: Path) -> Path:
    """Write the report of these sweeps to `out` atomically (a temporary sibling renamed into
    place), so a reader never sees half a file; return `out`."""
    page = render(store, sweep_ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
