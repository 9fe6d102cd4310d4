"""`wtb runs`, `show` and `log`: what was recorded of runs; `restore` and `diff`: their
files."""

from __future__ import annotations

from typing import Any

import click

from wtb_conf.cli import output
from wtb_conf.cli.common import print_json, resolve_commit
from wtb_conf.cli.options import json_option, store_command
from wtb_conf.store import Store, StoreError

CHECKPOINT_HELP = "checkpoint id (or unique prefix) of one of its cases"


@store_command("runs", "list runs (all, or of one sweep)", readonly=True)
@click.option("--sweep", help="a sweep id (or prefix), or 'last'")
@json_option
def cmd_runs(store: Store, sweep: str | None, as_json: bool) -> None:
    if sweep == "last":
        sweep = store.last_sweep()
    elif sweep is not None:
        sweep = store.resolve("sweeps", sweep)
    runs = store.runs(sweep)
    if as_json:
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


@store_command("show", "one run: status, metrics, cases, checkpoints, final state",
               readonly=True)
@click.argument("run")
@json_option
def cmd_show(store: Store, run: str, as_json: bool) -> None:
    """RUN: run id, unique prefix, or 'last'."""
    run = show(store, store.resolve("runs", run))
    if as_json:
        return print_json(run)
    output.print_run(run)


@store_command("log", "the events of one run", readonly=True)
@click.argument("run")
@json_option
def cmd_log(store: Store, run: str, as_json: bool) -> None:
    """RUN: run id, unique prefix, or 'last'."""
    events = store.events(store.resolve("runs", run))
    if as_json:
        return print_json(events)
    for e in events:
        data = " ".join(f"{k}={v}" for k, v in e["data"].items() if v is not None)
        print(f"{e['at']}  {e['kind']:<15} {data}")


@store_command("restore", "write a run's files (final, or at a checkpoint) to DIR",
               readonly=True)
@click.argument("run")
@click.option("--checkpoint", help=CHECKPOINT_HELP)
@click.option("--to", "to", required=True, metavar="DIR", help="a new or empty directory")
def cmd_restore(store: Store, run: str, checkpoint: str | None, to: str) -> None:
    """RUN: run id, unique prefix, or 'last'."""
    run_id = store.resolve("runs", run)
    if checkpoint:
        cp = store.checkpoint(run_id, checkpoint)
        commit = cp["commit"]
        what = f"checkpoint {cp['checkpoint_id']} (case {cp['case']})"
    else:
        commit = resolve_commit(store, run_id)
        what = "the final commit"
    try:
        paths = store.restore(commit, to)
    except OSError as e:  # its parent is missing, read-only, a file
        if e.errno is None:  # the store's own "exists and is not empty"
            raise
        why = "a file is in the way" if isinstance(e, FileExistsError) else e.strerror
        raise StoreError(f"--to {to}: cannot restore there: {why}") from None
    print(f"restored {len(paths)} files of run {run_id[:8]}, {what}, into {to}")


@store_command("diff", "paths added, removed and changed between runs or commits",
               readonly=True)
@click.argument("a")
@click.argument("b")
@json_option
def cmd_diff(store: Store, a: str, b: str, as_json: bool) -> None:
    """A, B: run or commit ids (or prefixes)."""
    diff = store.diff(resolve_commit(store, a), resolve_commit(store, b))
    if as_json:
        return print_json(diff.as_dict())
    for sign, paths in (("+", diff.added), ("-", diff.removed), ("M", diff.changed)):
        for p in paths:
            print(f"{sign} {p}")
    if not (diff.added or diff.removed or diff.changed):
        print("no differences")


COMMANDS = (cmd_runs, cmd_show, cmd_log, cmd_restore, cmd_diff)
