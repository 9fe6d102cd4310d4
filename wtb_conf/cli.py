"""`wtb`: look at what the sweeps recorded. Every command and its --json output is documented
in docs/cli.md (tests/test_docs.py fails when one is not)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wtb_conf import views
from wtb_conf.checkpoints import is_postgres, libpq_url, store_url
from wtb_conf.replay import cmd_rerun, cmd_resume, cmd_rollback
from wtb_conf.store import Store, StoreError, open_store


def _resolve_commit(store: Store, ref: str) -> str:
    """A run (its final commit) or a commit, by id or unique prefix."""
    try:
        run = store.run(store.resolve("runs", ref))
    except StoreError:
        return store.resolve("commits", ref)
    if run["commit"] is None:
        raise StoreError(f"run {run['run_id']} has no final commit (status {run['status']})")
    return run["commit"]


def _reap(store: Store) -> None:
    """Runs and sweeps whose process died are recorded failed by whoever writes next."""
    reaped = store.reap()
    if reaped["runs"] or reaped["sweeps"]:
        print(f"wtb: recorded as failed: {len(reaped['runs'])} runs and "
              f"{len(reaped['sweeps'])} sweeps whose processes had died", file=sys.stderr)


def _note_lost(store: Store) -> None:
    """A read-only command cannot record them failed; it says they are not running."""
    lost = store.lost()
    if lost["runs"] or lost["sweeps"]:
        print(f"wtb: {len(lost['runs'])} runs and {len(lost['sweeps'])} sweeps say `running` "
              "but their processes are gone; the next sweep or `wtb fsck --repair` records "
              "them failed", file=sys.stderr)


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
    views.print_runs(runs, f"sweep {sweep[:8]}" if sweep else "all runs")


def _show(store: Store, run_id: str) -> dict[str, Any]:
    run = store.run(run_id)
    links = store.checkpoints(run_id)
    run["cases"] = []
    for t in store.threads(run_id):
        own = [{k: v for k, v in link.items() if k not in ("case", "thread_id", "run_id")}
               for link in links if link["thread_id"] == t["thread_id"]]
        executed = [n for link in own for n in link["nodes"]]
        run["cases"].append({**t, "checkpoints": own, "executed": executed})
    lineage, parent = [], run["parent_run"]
    while parent and parent not in lineage:  # the runs it forked from, nearest first
        lineage.append(parent)
        parent = store.run(parent)["parent_run"]
    run["lineage"] = lineage
    run["evaluations"] = store.evaluations(run_id)  # newest first
    return run


def cmd_show(store: Store, args: argparse.Namespace) -> None:
    run = _show(store, store.resolve("runs", args.run))
    if args.json:
        return _print_json(run)
    views.print_run(run)


def cmd_restore(store: Store, args: argparse.Namespace) -> None:
    run_id = store.resolve("runs", args.run)
    if args.checkpoint:
        cp = store.checkpoint(run_id, args.checkpoint)
        commit = cp["commit"]
        what = f"checkpoint {cp['checkpoint_id']} (case {cp['case']})"
    else:
        commit = _resolve_commit(store, run_id)
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
    diff = store.diff(_resolve_commit(store, args.a), _resolve_commit(store, args.b))
    if args.json:
        return _print_json(diff.as_dict())
    for sign, paths in (("+", diff.added), ("-", diff.removed), ("M", diff.changed)):
        for p in paths:
            print(f"{sign} {p}")
    if not (diff.added or diff.removed or diff.changed):
        print("no differences")


def cmd_log(store: Store, args: argparse.Namespace) -> None:
    events = store.events(store.resolve("runs", args.run))
    if args.json:
        return _print_json(events)
    for e in events:
        data = " ".join(f"{k}={v}" for k, v in e["data"].items() if v is not None)
        print(f"{e['at']}  {e['kind']:<15} {data}")


def _sweeps(store: Store, refs: Sequence[str]) -> list[str]:
    """Sweep ids from ids, prefixes or `last` (no refs: the last sweep)."""
    out = [store.resolve("sweeps", ref) for ref in refs or ["last"]]
    return list(dict.fromkeys(out))


def _run_or_sweep(store: Store, ref: str) -> tuple[str, str]:
    """("run", id) or ("sweep", id) for an id or prefix that names one of them; `last` is
    the last sweep."""
    if ref == "last":
        return "sweep", store.last_sweep()
    found = []
    for kind in ("runs", "sweeps"):
        try:
            found.append((kind[:-1], store.resolve(kind, ref)))
        except StoreError as e:
            error = e
    if len(found) == 1:
        return found[0]
    if found:
        raise StoreError(f"{ref!r} names both a run and a sweep: give more characters")
    raise StoreError(f"{ref!r} is neither a run nor a sweep ({error})")


def cmd_compare(store: Store, args: argparse.Namespace) -> None:
    from wtb_conf import compare

    sweeps = _sweeps(store, args.sweeps)
    rows, note = compare.rows(store, sweeps, cases=args.cases)
    if args.baseline:
        kind, ref = _run_or_sweep(store, args.baseline)
        sweep = store.run(ref)["sweep_id"] if kind == "run" else ref
        base = [r for r in compare.rows(store, [sweep], cases=args.cases)[0]
                if kind == "sweep" or r["run_id"] == ref]
        if not base:
            raise StoreError(f"--baseline {args.baseline}: run {ref[:8]} is not the newest run "
                             "of its job; name that one")
        compare.add_baseline(rows, base, by_params=kind == "sweep")
    if args.sort:
        rows = compare.sort_rows(rows, args.sort)
    if args.json:
        return _print_json(rows)
    if args.csv:
        return print(compare.to_csv(rows), end="")
    title = "sweep " + ", ".join(s[:8] for s in sweeps)
    compare.print_rows(rows, title + (f" — baseline {args.baseline}" if args.baseline else ""),
                       note)


def cmd_evaluate(store: Store, args: argparse.Namespace) -> int:
    from wtb_conf import compare
    from wtb_conf.scoring import evaluate_stored

    def is_override(word: str) -> bool:
        return "=" in word or word.startswith(("~", "+"))

    args.overrides += [w for w in args.refs if is_override(w)]
    run_ids, sweeps = [], []
    for ref in [w for w in args.refs if not is_override(w)] or ["last"]:
        kind, found = _run_or_sweep(store, ref)
        if kind == "run":
            run_ids.append(found)
            sweeps.append(store.run(found)["sweep_id"])
        else:
            run_ids += [r["run_id"] for r in compare.rows(store, [found])[0]]
            sweeps.append(found)
    failed = 0
    for run_id in dict.fromkeys(run_ids):  # one run that cannot be scored stops no other
        try:
            summary = evaluate_stored(store, run_id, args.overrides)
        except StoreError as e:
            print(f"wtb: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"wtb: run {run_id[:8]} scored again: " + (", ".join(
            f"{k}={compare.fmt(v)}" for k, v in summary["scores"].items()) or "no evaluators"))
    sweeps = list(dict.fromkeys(sweeps))
    rows, note = compare.rows(store, sweeps)
    compare.print_rows(rows, "sweep " + ", ".join(s[:8] for s in sweeps), note)
    return 1 if failed else 0


def cmd_report(store: Store, args: argparse.Namespace) -> None:
    from wtb_conf.report import write_report

    sweeps = _sweeps(store, args.sweeps)
    path = write_report(store, sweeps, Path(args.out))
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): open it in a browser")


def cmd_schema(args: argparse.Namespace) -> None:
    from wtb_conf.json_schemas import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    print("map them to your files in your editor: docs/config.md, 'Completion and checking in "
          "your editor'")


def cmd_fsck(store: Store, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from wtb_conf.store import fsck

    checkpoints = args.checkpoints
    if checkpoints is None:  # as the packaged storage=postgres: by default in the store's db
        checkpoints = os.environ.get("WTB_CHECKPOINTS") or (
            libpq_url(args.db) if is_postgres(args.db) else "data/checkpoints.db")
    report = fsck.check(store, checkpoints)
    found = done = None
    if args.repair:
        done = fsck.repair(store, report)
        found, report = report, fsck.check(store, checkpoints)  # what is left
    if args.json:
        _print_json(report.as_dict() | {"repaired": asdict(done) if done else None})
    else:
        views.print_fsck(report, found, done)
    return 0 if report.clean else 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wtb", description="Inspect the runs wtb_conf recorded.")
    # storage=postgres reads these variables: where a sweep found its store, wtb does too
    ap.add_argument("--db", default=os.environ.get("WTB_DB_URL") or "data/wtb.db",
                    type=store_url,
                    help="store database: SQLAlchemy URL (sqlite:///..., postgresql://...) or "
                         "SQLite path (default: $WTB_DB_URL, else data/wtb.db)")
    ap.add_argument("--blobs", default=os.environ.get("WTB_BLOB_ROOT") or "data/blobs",
                    help="blob directory or s3:// URL (default: $WTB_BLOB_ROOT, else "
                         "data/blobs)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("runs", help="list runs (all, or of one sweep)")
    p.add_argument("--sweep", help="a sweep id (or prefix), or 'last'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_runs, readonly=True)

    p = sub.add_parser("show", help="one run: status, metrics, cases, checkpoints, final state")
    p.add_argument("run", help="run id, unique prefix, or 'last'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show, readonly=True)

    p = sub.add_parser("restore", help="write a run's files (final, or at a checkpoint) to DIR")
    p.add_argument("run", help="run id, unique prefix, or 'last'")
    p.add_argument("--checkpoint", help="checkpoint id (or unique prefix) of one of its cases")
    p.add_argument("--to", required=True, help="a new or empty directory")
    p.set_defaults(fn=cmd_restore, readonly=True)

    p = sub.add_parser("diff", help="paths added, removed and changed between runs or commits")
    p.add_argument("a", help="run or commit id (or prefix)")
    p.add_argument("b", help="run or commit id (or prefix)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_diff, readonly=True)

    overrides = {"nargs": "*", "metavar": "OVERRIDE",
                 "help": "more Hydra overrides for the new run, e.g. hydra/launcher=basic"}
    p = sub.add_parser("rerun", help="rerun one run from its stored config, or a sweep's "
                                     "failed and interrupted jobs")
    p.add_argument("run", nargs="?", help="run id, unique prefix, or 'last': runs again from "
                                          "the config it stored, bypassing the job cache")
    p.add_argument("--failed", metavar="SWEEP",
                   help="a sweep id (or prefix), or 'last': its command runs again, and the "
                        "jobs that completed are reported as cached")
    p.add_argument("overrides", **overrides)
    p.set_defaults(fn=cmd_rerun)

    p = sub.add_parser("resume", help="continue a paused (or failed) run in a new run")
    p.add_argument("run", help="run id, unique prefix, or 'last'")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a state field before continuing (repeatable); VALUE is YAML")
    p.add_argument("overrides", **overrides)
    p.set_defaults(fn=cmd_resume)

    p = sub.add_parser("rollback", help="a new paused run with a run's state and files at "
                                        "one of its checkpoints")
    p.add_argument("run", help="run id, unique prefix, or 'last'")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint id (or unique prefix) of one of its cases")
    p.add_argument("overrides", **overrides)
    p.set_defaults(fn=cmd_rollback)

    p = sub.add_parser("compare", help="one row per job: varying params, status, metrics, "
                                       "scores, the best job (read-only)")
    p.add_argument("sweeps", nargs="*", metavar="SWEEP",
                   help="sweep ids (or prefixes), or 'last' (the default)")
    p.add_argument("--cases", action="store_true", help="one row per job and case")
    p.add_argument("--sort", metavar="KEY", help="sort by a column (-KEY: descending)")
    p.add_argument("--baseline", metavar="RUN|SWEEP",
                   help="add each number's difference to this run, or to the same job of "
                        "this sweep")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    p.set_defaults(fn=cmd_compare, readonly=True)

    p = sub.add_parser("evaluate", help="score stored runs again with their evaluators (or "
                                        "changed ones); nothing runs")
    p.add_argument("refs", nargs="*", metavar="SWEEP|RUN|OVERRIDE",
                   help="sweeps or runs (ids, prefixes; 'last', the default, is the last "
                        "sweep), and Hydra overrides of their stored configs (words with "
                        "'='), e.g. workflow.evaluators.total_ok.abs_tol=1")
    p.set_defaults(fn=cmd_evaluate, overrides=[])

    p = sub.add_parser("report", help="a self-contained HTML report of sweeps (read-only)")
    p.add_argument("sweeps", nargs="*", metavar="SWEEP",
                   help="sweep ids (or prefixes), or 'last' (the default)")
    p.add_argument("--out", default="report.html", help="the HTML file to write "
                                                         "(default: report.html)")
    p.set_defaults(fn=cmd_report, readonly=True)

    p = sub.add_parser("log", help="the events of one run")
    p.add_argument("run", help="run id, unique prefix, or 'last'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_log, readonly=True)

    p = sub.add_parser("schema", help="write JSON Schemas of the config files, for an editor "
                                      "to complete and check them (no store needed)")
    p.add_argument("--out", metavar="DIR", default=".wtb/schemas",
                   help="the directory to write them into (default: .wtb/schemas)")
    p.set_defaults(fn=cmd_schema, store=False)

    p = sub.add_parser("fsck", help="check the store is whole: objects, links, statuses, "
                                    "orphans (read-only unless --repair)")
    p.add_argument("--checkpoints", metavar="FILE_OR_URL",
                   help="LangGraph's checkpointer the links point into: its SQLite file or a "
                        "postgresql:// URL (default: $WTB_CHECKPOINTS, else the --db "
                        "database if PostgreSQL, else data/checkpoints.db)")
    p.add_argument("--repair", action=_Repair, nargs=0,
                   help="remove orphans and mark runs a dead process left running failed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_fsck, readonly=True, repair=False)
    return ap


class _Repair(argparse.Action):
    """`fsck --repair` writes: only then is the store opened for writing."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.repair, namespace.readonly = True, False


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `wtb compare --csv | head` ends quietly
    ap = parser()
    # Hydra overrides may come anywhere after the run (argparse stops collecting positionals
    # at the first option), so the extra words are taken as overrides where a command has them.
    args, extra = ap.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    needs_store = getattr(args, "store", True)
    if needs_store and "://" not in args.db and not Path(args.db).exists():
        print(f"wtb: error: no store at {args.db}: run `python -m wtb_conf -m ...` here first, "
              "or pass --db", file=sys.stderr)
        return 2
    try:
        code = _with_store(args) if needs_store else args.fn(args)
    except StoreError as e:
        print(f"wtb: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # where restore --to, report --out or schema --out cannot write
        where = f"{e.filename}: " if e.filename else ""
        print(f"wtb: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def _with_store(args: argparse.Namespace) -> int | None:
    readonly = getattr(args, "readonly", False)
    with open_store(args.db, args.blobs, readonly=readonly) as store:
        if args.command == "fsck":  # it reports them; --repair records them
            pass
        elif readonly:
            _note_lost(store)
        else:
            _reap(store)
        return args.fn(store, args)

if __name__ == "__main__":
    sys.exit(main())
