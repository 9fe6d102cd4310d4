"""How `wtb` prints for people: runs, one run, an fsck report. (The --json forms are the
dicts themselves, printed by wtb_conf.cli.)"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def print_runs(runs: list[dict], title: str) -> None:
    metric_names = sorted({k for r in runs for k in r["metrics"] if "/" not in k})
    table = Table(title=title)
    for col in ("job", "run", "overrides", "status", "where", "checkpoints", "commit",
                *metric_names):
        table.add_column(col)
    for r in runs:
        status = r["status"] if r["status"] != "failed" else f"[red]{r['status']}[/red]"
        where = (r["host"] or "-") + (f", ray node {r['ray_node'][:8]}" if r["ray_node"] else "")
        table.add_row(
            str(r["job_num"]), r["run_id"][:8], " ".join(r["overrides"]), status, where,
            str(r["checkpoints"]), (r["commit"] or "-")[:12],
            *(_cell(r["metrics"].get(m, "")) for m in metric_names),
        )
    Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None).print(table)


def _cell(value: Any, width: int = 12) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_run(run: dict[str, Any]) -> None:
    """`wtb show`: status, lineage, metrics, scores, error, and per case its checkpoints."""
    console = Console()
    console.print(f"[bold]run {run['run_id']}[/bold]  job {run['job_num']} of sweep "
                  f"{run['sweep_id'][:8]}  [bold]{run['status']}[/bold]")
    console.print(f"overrides: {' '.join(run['overrides']) or '-'}")
    console.print(f"job dir:   {run['job_dir']}")
    console.print(f"commit:    {run['commit'] or '-'}")
    if run["cached_from"]:
        console.print(f"cache hit of run {run['cached_from']}: nothing ran; its cases, "
                      "checkpoints and files are that run's (below)")
    if run["lineage"]:
        console.print("forked from: " + " ← ".join(r[:8] for r in run["lineage"]))
    if run["status"] == "paused":
        console.print(f"paused: continue with `wtb resume {run['run_id'][:8]}`")
    if run["metrics"]:
        console.print("metrics:   " + ", ".join(f"{k}={v}" for k, v in run["metrics"].items()))
    if run["evaluations"]:
        newest = run["evaluations"][0]
        summary = newest["summary"]
        console.print("scores:    " + (", ".join(f"{k}={v:.4g}" for k, v in
                                                  summary["scores"].items()) or "-")
                      + f" (success_rate={summary['success_rate']}, {newest['source']} "
                      f"{newest['created_at'][:19]}; {len(run['evaluations'])} evaluation(s))",
                      markup=False, highlight=False)
        for case, scored in newest["cases"].items():
            for name, error in scored["errors"].items():
                console.print(f"[red]evaluator {name} on case {case}: {error}[/red]")
    if run["error"]:
        console.print(f"[red]error: {run['error']}[/red]")
        console.print(run["traceback"] or "", markup=False, highlight=False)
    for case in run["cases"]:
        table = Table(title=f"case {case['case']} ({case['status']}) — thread {case['thread_id']}")
        if case["parent_thread"]:
            console.print(f"case {case['case']}: forked from thread {case['parent_thread']} at "
                          f"checkpoint {case['parent_checkpoint']}; inherited "
                          f"{', '.join(case['inherited']) or 'no nodes'}, executed "
                          f"{', '.join(case['executed']) or 'no nodes'}")
        for col in ("step", "checkpoint", "source", "nodes", "commit"):
            table.add_column(col)
        for cp in case["checkpoints"]:
            table.add_row(str(cp["step"]), cp["checkpoint_id"], cp["source"],
                          ", ".join(cp["nodes"]) or "-", cp["commit"][:12])
        console.print(table)
        console.print("final state:", clip_json(case["final_state"], run["run_id"][:8]),
                      markup=False, highlight=False)


def clip_json(value: Any, run: str, limit: int = 2000) -> str:
    """`value` as JSON, cut after the last whole token within `limit` characters, with how
    much is left and where to see it all."""
    text = json.dumps(value, default=str)
    if len(text) <= limit:
        return text
    kept = 0
    for token in json.JSONEncoder(default=str).iterencode(value):  # its tokens, in order
        if kept + len(token) > limit:
            break
        kept += len(token)
    if kept == 0:  # one token longer than the limit (a long string): cut at a space in it
        kept = text.rfind(" ", 0, limit) + 1 or limit
    shown = text[:kept].rstrip()
    return (f"{shown} … ({len(text) - len(shown)} more characters; "
            f"wtb show {run} --json for all)")


def print_removal(done: Any, dry_run: bool) -> None:
    """`wtb rm`: what went (or would go)."""
    verb = "would remove" if dry_run else "removed"
    for run in done.runs:
        print(f"{verb}: run {run}")
    for sweep in done.sweeps:
        print(f"{verb}: sweep {sweep}")
    print(f"{verb} {len(done.runs)} runs, {len(done.sweeps)} sweeps, {len(done.threads)} case "
          f"threads; the {len(done.commits)} commits and {len(done.blobs)} blobs "
          f"({len(done.files)} in files) nothing else needs"
          + ("" if dry_run else f"; {len(done.checkpoint_threads)} LangGraph threads"))
    for note in done.skipped:
        print(f"note: {note}")
    if dry_run:
        print("dry run: nothing changed")


def print_collected(done: Any, dry_run: bool) -> None:
    """`wtb gc`: what nothing needed, removed (or that would be)."""
    verb = "would remove" if dry_run else "removed"
    orphans = done.orphans
    print(f"{verb} {len(orphans.get('blobs', []))} blobs no commit reaches, "
          f"{len(orphans.get('files', []))} blob or temp files no row names, "
          f"{len(orphans.get('stat_cache', []))} stat cache rows, "
          f"{len(done.checkpoint_threads)} LangGraph threads of runs no longer in the store")
    for note in done.skipped:
        print(f"note: {note}")
    if dry_run:
        print("dry run: nothing changed")


def print_fsck(report: Any, found: Any = None, done: Any = None) -> None:
    """`wtb fsck`: the problems of `report`; after --repair, those `found` before it, what it
    `done`, and what is left (`report`)."""
    if done is None:
        return _fsck_problems(report)
    _fsck_problems(found)
    for table, ids in done.reaped.items():
        for obj in ids:
            print(f"repaired: {table[:-1]} {obj} marked failed (lost)")
    for what, items in done.removed.items():
        if items:
            print(f"repaired: removed {len(items)} orphan {what.replace('_', ' ')}")
    for note in done.skipped:
        print(f"repair skipped: {note}")
    print("after repair: " + ("clean" if report.clean else
                              f"{len(report.problems)} problems left"))
    if not report.clean:
        _fsck_problems(report, fixes=False)


def _fsck_problems(report: Any, fixes: bool = True, per_kind: int = 20) -> None:
    """Counts per kind, then each problem (the first `per_kind` of a kind) and, with `fixes`,
    what --repair does about it."""
    c = report.checked
    print(f"wtb fsck: {c.get('commits', 0)} commits, {c.get('trees', 0)} trees, "
          f"{c.get('blobs', 0)} blobs ({c.get('blob_files', 0)} in files), "
          f"{c.get('links', 0)} checkpoint links, {c.get('runs', 0)} runs, "
          f"{c.get('sweeps', 0)} sweeps checked")
    by_kind = report.by_kind()
    for kind, problems in by_kind.items():
        print(f"{kind}: {len(problems)}")
    for kind, problems in by_kind.items():
        for p in problems[:per_kind]:
            print(f"  {kind}: {p.message}")
            if fixes:
                print(f"      --repair: {p.repair or 'nothing'}")
        if len(problems) > per_kind:
            print(f"  … and {len(problems) - per_kind} more {kind} (--json lists them all)")
    for note in report.notes:
        print(f"note: {note}")
    print("clean" if report.clean else f"{len(report.problems)} problems")


