"""`wtb`: look at what the sweeps recorded. Every command and its --json output is documented
in docs/cli.md (tests/test_docs.py fails when one is not)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wtb_conf.store import Store, StoreError, open_store

console = Console()


def _resolve_run(store: Store, ref: str) -> str:
    if ref == "last":
        runs = store.runs()
        if not runs:
            raise StoreError("the store holds no runs yet: run `python -m wtb_conf -m ...`")
        return runs[-1]["run_id"]
    return store.resolve("runs", ref)


def _resolve_commit(store: Store, ref: str) -> str:
    """A run (its final commit) or a commit, by id or unique prefix."""
    try:
        run = store.run(_resolve_run(store, ref))
    except StoreError:
        return store.resolve("commits", ref)
    if run["commit"] is None:
        raise StoreError(f"run {run['run_id']} has no final commit (status {run['status']})")
    return run["commit"]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def cmd_runs(store: Store, args: argparse.Namespace) -> None:
    sweep = args.sweep
    if sweep == "last":
        sweep = store.last_sweep()
    elif sweep is not None:
        sweep = store.resolve("sweeps", sweep)
    runs = store.runs(sweep)
    if args.json:
        return _print_json(runs)
    from wtb_conf.sweep import print_table

    print_table(runs, f"sweep {sweep[:8]}" if sweep else "all runs")


def _show(store: Store, run_id: str) -> dict[str, Any]:
    run = store.run(run_id)
    links = store.checkpoints(run_id)
    run["cases"] = [
        {**t, "checkpoints": [
            {k: v for k, v in link.items() if k not in ("case", "thread_id")}
            for link in links if link["thread_id"] == t["thread_id"]
        ]}
        for t in store.threads(run_id)
    ]
    return run


def cmd_show(store: Store, args: argparse.Namespace) -> None:
    run = _show(store, _resolve_run(store, args.run))
    if args.json:
        return _print_json(run)
    console.print(f"[bold]run {run['run_id']}[/bold]  job {run['job_num']} of sweep "
                  f"{run['sweep_id'][:8]}  [bold]{run['status']}[/bold]")
    console.print(f"overrides: {' '.join(run['overrides']) or '-'}")
    console.print(f"job dir:   {run['job_dir']}")
    console.print(f"commit:    {run['commit'] or '-'}")
    if run["metrics"]:
        console.print("metrics:   " + ", ".join(f"{k}={v}" for k, v in run["metrics"].items()))
    if run["error"]:
        console.print(f"[red]error: {run['error']}[/red]")
        console.print(run["traceback"] or "", markup=False, highlight=False)
    for case in run["cases"]:
        table = Table(title=f"case {case['case']} ({case['status']}) — thread {case['thread_id']}")
        for col in ("step", "checkpoint", "source", "nodes", "commit"):
            table.add_column(col)
        for cp in case["checkpoints"]:
            table.add_row(str(cp["step"]), cp["checkpoint_id"], cp["source"],
                          ", ".join(cp["nodes"]) or "-", cp["commit"][:12])
        console.print(table)
        console.print("final state:", json.dumps(case["final_state"], default=str)[:2000],
                      markup=False, highlight=False)


def cmd_restore(store: Store, args: argparse.Namespace) -> None:
    run_id = _resolve_run(store, args.run)
    if args.checkpoint:
        matches = [c for c in store.checkpoints(run_id)
                   if c["checkpoint_id"].startswith(args.checkpoint)]
        if len(matches) != 1:
            raise StoreError(
                f"{len(matches) or 'no'} checkpoints of run {run_id[:8]} match "
                f"{args.checkpoint!r}; list them with `wtb show {run_id[:8]}`"
            )
        commit = matches[0]["commit"]
        what = f"checkpoint {matches[0]['checkpoint_id']} (case {matches[0]['case']})"
    else:
        commit = _resolve_commit(store, run_id)
        what = "the final commit"
    paths = store.restore(commit, args.to)
    print(f"restored {len(paths)} files of run {run_id[:8]}, {what}, into {args.to}")


def cmd_diff(store: Store, args: argparse.Namespace) -> None:
    diff = store.diff(_resolve_commit(store, args.a), _resolve_commit(store, args.b))
    if args.json:
        return _print_json(diff.as_dict())
    for sign, paths in (("+", diff.added), ("-", diff.removed), ("M", diff.changed)):
        for p in paths:
            print(f"{sign} {p}")
    if not (diff.added or diff.removed or diff.changed):
        print("no differences")


def cmd_log(store: Store, args: argparse.Namespace) -> None:
    events = store.events(_resolve_run(store, args.run))
    if args.json:
        return _print_json(events)
    for e in events:
        data = " ".join(f"{k}={v}" for k, v in e["data"].items() if v is not None)
        print(f"{e['at']}  {e['kind']:<15} {data}")


def cmd_rerun(store: Store, args: argparse.Namespace) -> int:
    """Run a sweep's command again: jobs that completed are cache hits, the rest run."""
    sweep_id = store.last_sweep() if args.failed == "last" else store.resolve("sweeps", args.failed)
    argv = store.sweep(sweep_id)["argv"]
    failed = [r for r in store.runs(sweep_id) if r["status"] == "failed"]
    print(f"rerunning sweep {sweep_id[:8]} ({len(failed)} failed or interrupted runs): "
          f"python -m wtb_conf {' '.join(argv)}", flush=True)
    return subprocess.run([sys.executable, "-m", "wtb_conf", *argv]).returncode


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wtb", description="Inspect the runs wtb_conf recorded.")
    ap.add_argument("--db", default="data/wtb.db",
                    help="store database: SQLAlchemy URL or SQLite path (default: data/wtb.db)")
    ap.add_argument("--blobs", default="data/blobs",
                    help="blob directory (default: data/blobs)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("runs", help="list runs (all, or of one sweep)")
    p.add_argument("--sweep", help="a sweep id (or prefix), or 'last'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_runs)

    p = sub.add_parser("show", help="one run: status, metrics, cases, checkpoints, final state")
    p.add_argument("run", help="run id, unique prefix, or 'last'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("restore", help="write a run's files (final, or at a checkpoint) to DIR")
    p.add_argument("run", help="run id, unique prefix, or 'last'")
    p.add_argument("--checkpoint", help="checkpoint id (or unique prefix) of one of its cases")
    p.add_argument("--to", required=True, help="a new or empty directory")
    p.set_defaults(fn=cmd_restore)

    p = sub.add_parser("diff", help="paths added, removed and changed between runs or commits")
    p.add_argument("a", help="run or commit id (or prefix)")
    p.add_argument("b", help="run or commit id (or prefix)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_diff)

    p = sub.add_parser("rerun", help="rerun a sweep's failed and interrupted jobs")
    p.add_argument("--failed", required=True, metavar="SWEEP",
                   help="a sweep id (or prefix), or 'last': its command runs again, and the "
                        "jobs that completed are reported as cached")
    p.set_defaults(fn=cmd_rerun)

    p = sub.add_parser("log", help="the events of one run")
    p.add_argument("run", help="run id, unique prefix, or 'last'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_log)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if "://" not in args.db and not Path(args.db).exists():
        print(f"wtb: error: no store at {args.db}: run `python -m wtb_conf -m ...` here first, "
              "or pass --db", file=sys.stderr)
        return 2
    try:
        with open_store(args.db, args.blobs) as store:
            code = args.fn(store, args)
        if isinstance(code, int):
            return code
    except (StoreError, FileExistsError) as e:
        print(f"wtb: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
