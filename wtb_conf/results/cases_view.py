"""The report's per-case view: a case x job grid, and what opening a cell shows.

A cell is one job on one case (all its trials): its scores, pass/fail, status and a one-line
summary of its final state. Opening it shows the case's input and expected values, and per
trial its status, scores, final state, small text outputs and a per-node timeline; each case
also has its top job and its baseline (or runner-up) side by side, output files diffed.
What goes in the page is capped (MAX_*) so a 200-job x 10-case x 10-trial sweep stays a few MB;
`wtb restore` gives back whatever is left out.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import yaml

from wtb_conf.results import table
from wtb_conf.store import Store, StoreError
from wtb_conf.trials import split_key

MAX_STATE = 1500  # characters of a final state shown in full
MAX_TEXT = 2000  # bytes up to which an output file is shown inline (and diffed)
MAX_FILES = 4  # output files shown inline per trial
FULL_TRIALS = 2  # trials per cell shown with their final state and outputs
MAX_OUTPUT_CELLS = 300  # cells whose trials show output files (each costs store reads)


def summary(state: Mapping[str, Any] | None, width: int = 70) -> str:
    """`answer='30 days.' words=2`: the final state's scalars, cut to one line."""
    parts = []
    for key, value in (state or {}).items():
        if isinstance(value, str | int | float | bool) or value is None:
            text = repr(value) if isinstance(value, str) else json.dumps(value)
            parts.append(f"{key}={text[:40]}")
    line = " ".join(parts) or ", ".join(state or {}) or "(empty)"
    return line if len(line) <= width else line[:width - 1] + "…"


def _json(value: Any, limit: int = MAX_STATE) -> str:
    text = json.dumps(value, indent=1, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more)"


def _texts(store: Store, commit: str | None) -> dict[str, str]:
    """The small UTF-8 text files of a commit (a case dir), by path."""
    if not commit:
        return {}
    try:
        tree = store.tree(commit)
    except StoreError:
        return {}
    out = {}
    for path, entry in sorted(tree.items()):
        if entry.size > MAX_TEXT or len(out) >= MAX_FILES:
            continue
        try:
            out[path] = store.read_blob(entry.blob, path).decode()
        except (StoreError, UnicodeDecodeError, OSError):
            continue
    return out


def node_calls(events: list[dict[str, Any]]) -> Iterator[tuple[str, str, float]]:
    """(thread, node, seconds) per `node` event: the time since the thread's previous event
    (the approximation the report's DURATION_NOTE explains)."""
    last: dict[str, datetime] = {}
    for event in events:
        thread = event["data"].get("thread_id")
        if not thread:
            continue
        at = datetime.fromisoformat(event["at"])
        if event["kind"] == "node" and thread in last:
            yield thread, event["data"]["node"], (at - last[thread]).total_seconds()
        last[thread] = at


def _timeline(events: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """Per thread, its nodes in order with their seconds."""
    out: dict[str, list[tuple[str, float]]] = {}
    for thread, node, seconds in node_calls(events):
        out.setdefault(thread, []).append((node, seconds))
    return out


def _config(store: Store, run_id: str) -> dict[str, Any]:
    try:
        return (yaml.safe_load(store.run(run_id)["config_yaml"] or "") or {}).get(
            "workflow") or {}
    except (yaml.YAMLError, StoreError, AttributeError):
        return {}


def _scores_text(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={'✓' if v is True else '✗' if v is False else table.fmt(v)}"
                    for k, v in row["scores"].items())


def _cell(job: dict[str, Any], trials: list[dict[str, Any]], objective: str | None) -> dict:
    """What the grid shows of one job on one case, over its trials."""
    failed = sum(t["status"] == "failed" for t in trials)
    values = [t["scores"].get(objective) for t in trials if objective in t["scores"]]
    if values and all(isinstance(v, bool) for v in values):
        headline = f"{objective} {sum(values)}/{len(values)}"
    elif values:
        headline = f"{objective} {table.fmt(sum(values) / len(values))}"
    else:
        headline = _scores_text(trials[0]) if trials else ""
    return {"headline": headline, "failed": failed, "trials": len(trials),
            "cls": "failed" if failed else "ok" if values and all(v is True for v in values)
            else "", "summary": trials[0]["_summary"] if trials else ""}


def build(store: Store, rows: list[dict[str, Any]], case_rows: list[dict[str, Any]],
          threads: dict[str, list[dict[str, Any]]], events: dict[str, list[dict[str, Any]]],
          labels: list[str]) -> dict[str, Any]:
    """The grid and its cells' details. `threads`: per run its (source run's) threads;
    `events`: per source run its events; `labels`: the jobs' chart labels."""
    by_job: dict[str, dict[str, list[dict[str, Any]]]] = {}
    finals = {r["run_id"]: {t["case"]: t for t in threads.get(r["run_id"], [])} for r in rows}
    for c in case_rows:
        if c.get("case") is None:
            continue
        thread = finals.get(c["run_id"], {}).get(c["case"]) or {}
        c = {**c, "_final": thread.get("final_state") or {}, "_commit": thread.get("commit"),
             "_thread": thread.get("thread_id"), "_summary": summary(thread.get("final_state"))}
        by_job.setdefault(c["run_id"], {}).setdefault(split_key(c["case"])[0], []).append(c)
    cases = list(dict.fromkeys(k for job in by_job.values() for k in job))
    objective = next((r["objective"] for r in rows if r["objective"]), None)
    timelines = {run: _timeline(ev) for run, ev in events.items()}
    configs = {r["run_id"]: _config(store, r["run_id"]) for r in rows}
    budget = [MAX_OUTPUT_CELLS]
    grid, details = [], []
    for case in cases:
        cells = []
        for r, label in zip(rows, labels, strict=True):
            trials = by_job.get(r["run_id"], {}).get(case, [])
            cell_id = f"cell-{r['run_id'][:8]}-{case}"
            cells.append({**_cell(r, trials, objective), "id": cell_id} if trials else None)
            if trials:
                details.append(_details(store, r, label, case, trials, configs[r["run_id"]],
                                        timelines.get(r["cached_from"] or r["run_id"], {}),
                                        cell_id, budget))
        grid.append({"case": case, "cells": cells,
                     "failed": any(c is not None and c["failed"] for c in cells)})
    return {"grid": grid, "details": details,
            "pairs": [p for case in cases if (p := _pair(store, rows, labels, by_job, case))]}


def _details(store: Store, row: dict[str, Any], label: str, case: str,
             trials: list[dict[str, Any]], workflow: Mapping[str, Any],
             timeline: dict[str, list[tuple[str, float]]], cell_id: str,
             budget: list[int]) -> dict[str, Any]:
    # failed trials first: they are the ones to look at
    ordered = sorted(trials, key=lambda t: (t["status"] != "failed", t.get("trial") or 0))
    outputs = budget[0] > 0
    budget[0] -= outputs
    shown = []
    for i, t in enumerate(ordered):
        full = i < FULL_TRIALS
        shown.append({
            "key": t["case"], "status": t["status"], "error": t["error"],
            "scores": _scores_text(t), "full": full,
            "final": _json(t["_final"]) if full else None,
            "outputs": _texts(store, t["_commit"]) if full and outputs else {},
            "timeline": [(n, table.fmt(s * 1e3)) for n, s in timeline.get(t["_thread"], [])]})
    return {"id": cell_id, "label": label, "case": case, "run_id": row["run_id"],
            "input": _json((workflow.get("cases") or {}).get(case)),
            "expected": _json((workflow.get("expected") or {}).get(case)),
            "trials": shown}


def _pair(store: Store, rows: list[dict[str, Any]], labels: list[str],
          by_job: dict[str, dict[str, list[dict[str, Any]]]], case: str) -> dict | None:
    """The top job (best, or first tied) and the baseline (or the runner-up) on a case,
    their first trials side by side: final states and each text file's diff."""
    top = next((r for r in rows if r["best"]), None) or next(
        (r for r in rows if r.get("tied")), None)
    if top is None:
        return None
    other = next((r for r in rows if r.get("baseline_run") == r["run_id"] and r is not top),
                 None) or next((r for r in rows if r["run_id"] == (top.get("vs_next") or {})
                                .get("run_id")), None)
    if other is None:
        return None
    a = (by_job.get(top["run_id"], {}).get(case) or [None])[0]
    b = (by_job.get(other["run_id"], {}).get(case) or [None])[0]
    if a is None or b is None:
        return None
    ta, tb = _texts(store, a["_commit"]), _texts(store, b["_commit"])
    diffs = []
    for path in sorted(set(ta) | set(tb)):
        lines = list(difflib.unified_diff(tb.get(path, "").splitlines(),
                                          ta.get(path, "").splitlines(), f"{path} (B)",
                                          f"{path} (A)", lineterm=""))
        diffs.append({"path": path, "diff": "\n".join(lines) or "(the same)"})
    label = dict(zip((r["run_id"] for r in rows), labels, strict=True))
    return {"case": case, "a": label[top["run_id"]], "b": label[other["run_id"]],
            "a_key": a["case"], "b_key": b["case"], "a_final": _json(a["_final"]),
            "b_final": _json(b["_final"]), "diffs": diffs}
