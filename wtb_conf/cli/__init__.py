"""`wtb`: look at what the sweeps recorded. Every command and its --json output is documented
in docs/cli.md (tests/test_docs.py fails when one is not). The commands are in the modules
named for them: runs (runs, show, log, restore, diff), scores (compare, evaluate, report),
upkeep (fsck, rm, gc); replay (rerun, resume, rollback) is wtb_conf.cli.replay."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from wtb_conf.cli.common import note_lost, reap
from wtb_conf.cli.replay import cmd_rerun, cmd_resume, cmd_rollback
from wtb_conf.cli.runs import cmd_diff, cmd_log, cmd_restore, cmd_runs, cmd_show
from wtb_conf.cli.scores import cmd_compare, cmd_evaluate, cmd_report
from wtb_conf.cli.upkeep import cmd_fsck, cmd_gc, cmd_rm, mixed_note
from wtb_conf.storage import sqlalchemy_url
from wtb_conf.store import StoreError, open_store


def cmd_schema(args: argparse.Namespace) -> None:
    from wtb_conf.config.jsonschema import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    print("map them to your files in your editor: docs/config.md, 'Completion and checking in "
          "your editor'")


def cmd_init(args: argparse.Namespace) -> int:
    from wtb_conf.cli.init import InitError, make_project

    try:
        written = make_project(args.dir)
    except InitError as e:
        print(f"wtb: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    where = "" if Path(args.dir).resolve() == Path.cwd() else f"cd {args.dir} && "
    print(f"run it: {where}python -m wtb_conf -m workflow=hello   (then `wtb compare`)")
    print("the store goes in data/ (storage.db_url, storage.blob_root, storage.checkpoints): "
          "keep your own input files out of it, e.g. in inputs/ as here")
    if note := mixed_note(str(Path(args.dir, "data", "wtb.db"))):
        print(f"warning: {note}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wtb", description="Inspect the runs wtb_conf recorded.")
    # storage=postgres reads these variables: where a sweep found its store, wtb does too
    ap.add_argument("--db", default=os.environ.get("WTB_DB_URL") or "data/wtb.db",
                    type=sqlalchemy_url,
                    help="store database: SQLAlchemy URL (sqlite:///..., postgresql://...) or "
                         "SQLite path (default: $WTB_DB_URL, else data/wtb.db)")
    ap.add_argument("--blobs", default=os.environ.get("WTB_BLOB_ROOT") or "data/blobs",
                    help="blob directory or s3:// URL (default: $WTB_BLOB_ROOT, else "
                         "data/blobs)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    checkpoints_help = ("LangGraph's checkpointer the links point into: its SQLite file or "
                        "a postgresql:// URL (default: $WTB_CHECKPOINTS, else the --db "
                        "database if PostgreSQL, else data/checkpoints.db)")

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
    p.add_argument("--checkpoints", metavar="FILE_OR_URL", help=checkpoints_help)
    p.add_argument("--repair", action=_Repair, nargs=0,
                   help="remove orphans and mark runs a dead process left running failed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_fsck, readonly=True, repair=False)

    p = sub.add_parser("rm", help="remove runs and sweeps, and the commits, blobs and "
                                  "LangGraph checkpoints only they needed")
    p.add_argument("refs", nargs="+", metavar="RUN|SWEEP",
                   help="run or sweep ids (or unique prefixes), or 'last' (the last sweep)")
    p.add_argument("--dry-run", action=_DryRun, nargs=0,
                   help="list what would be removed; change nothing (opens the store "
                        "read-only)")
    p.add_argument("--checkpoints", metavar="FILE_OR_URL", help=checkpoints_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_rm, dry_run=False)

    p = sub.add_parser("gc", help="remove what nothing needs: fsck's orphans and LangGraph "
                                  "threads of runs no longer in the store")
    p.add_argument("--dry-run", action=_DryRun, nargs=0,
                   help="list what would be removed; change nothing")
    p.add_argument("--checkpoints", metavar="FILE_OR_URL", help=checkpoints_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_gc, dry_run=False)

    p = sub.add_parser("init", help="make a minimal project that `python -m wtb_conf -m "
                                    "workflow=hello` runs (no store needed)")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR",
                   help="where (default: the current directory; made if missing)")
    p.set_defaults(fn=cmd_init, store=False)
    return ap


class _DryRun(argparse.Action):
    """`--dry-run` changes nothing: the store is opened read-only."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.dry_run, namespace.readonly = True, True


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
        if args.command in ("fsck", "gc"):  # they report them; a repair records them
            pass
        elif readonly:
            note_lost(store)
        else:
            reap(store)
        return args.fn(store, args)

