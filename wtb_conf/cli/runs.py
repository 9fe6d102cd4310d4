"""`wtb runs`, `show` and `log`: what was recorded of runs; `restore` and `diff`: their
files."""

from __future__ import annotations

import argparse
from typing import Any

from wtb_conf.cli import output
from wtb_conf.cli.common import print_json, resolve_commit
from wtb_conf.store import Store, StoreError


def cmd_runs(store: Store, args: argparse.Namespace) -> None:
    sweep = args.sweep
    if sweep == "last":
        sweep = store.last_sweep()
    elif sweep is not None:
        sweep = store.resolve("sweeps", sweep)
    runs = store.runs(sweep)
    if args.json:
        return print_json(runs)
    output.print_runs(runs, f"sweep {sweep[:8]}" if sweep else "all runs")


def cases_of(store: Store, run_id: str) -> list[dict[str, Any]]:
    """A run's cases, each with its checkpoints and the nodes it executed."""
    links = store.checkpoints(run_id)
    out = []
    for t in store.threads(run_id):
        own = [{k: v for k, v in link.items() if k not in ("case", "thread_id", "run_id")}
               for link in links if link["thread_id"] == t["thread_id"]]
        executed = [n for link in own for n in link["nodes"]]
        out.append({**t, "checkpoints": own, "executed": executed})
    return out


def show(store: Store, run_id: str) -> dict[str, Any]:
    """The run object of `wtb show --json` (docs/cli.md)."""
    run = store.run(run_id)
    # A cache hit ran nothing: its cases are those of the run it reports.
    run["cases"] = cases_of(store, run["cached_from"] or run_id)
    lineage, parent = [], run["parent_run"]
    while parent and parent not in lineage:  # the runs it forked from, nearest first
        lineage.append(parent)
        parent = store.run(parent)["parent_run"]
    run["lineage"] = lineage
    run["evaluations"] = store.evaluations(run_id)  # newest first
    return run


def cmd_show(store: Store, args: argparse.Namespace) -> None:
    run = show(store, store.resolve("runs", args.run))
    if args.json:
        return print_json(run)
    output.print_run(run)


def cmd_log(store: Store, args: argparse.Namespace) -> None:
    events = store.events(store.resolve("runs", args.run))
    if args.json:
        return print_json(events)
    for e in events:
        data = " ".join(f"{k}={v}" for k, v in e["data"].items() if v is not None)
        print(f"{e['at']}  {e['kind']:<15} {data}")


def cmd_restore(store: Store, args: argparse.Namespace) -> None:
    run_id = store.resolve("runs", args.run)
    if args.checkpoint:
        cp = store.checkpoint(run_id, args.checkpoint)
        commit = cp["commit"]
        what = f"checkpoint {cp['checkpoint_id']} (case {cp['case']})"
    else:
        commit = resolve_commit(store, run_id)
        what = "the final commit"
    try:
        paths = store.restore(commit, args.to)
    except OSError as e:  # its parent is missing, read-only, a file
        if e.errno is None:  # the store's own "exists and is not empty"
            raise
        why = "a file is in the way" if isinstance(e, FileExistsError) else e.strerror
        raise StoreError(f"--to {args.to}: cannot restore there: {why}") from None
    print(f"restored {len(paths)} files of run {run_id[:8]}, {what}, into {args.to}")


def cmd_diff(store: Store, args: argparse.Namespace) -> None:
    diff = store.diff(resolve_commit(store, args.a), resolve_commit(store, args.b))
    if args.json:
        return print_json(diff.as_dict())
    for sign, paths in (("+", diff.added), ("-", diff.removed), ("M", diff.changed)):
        for p in paths:
            print(f"{sign} {p}")
    if not (diff.added or diff.removed or diff.changed):
        print("no differences")
