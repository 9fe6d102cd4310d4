"""`wtb fsck`, `rm` and `gc`: keeping the store whole, and removing what is not wanted."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from wtb_conf.cli import output
from wtb_conf.cli.common import checkpoints_of, print_json, run_or_sweep
from wtb_conf.store import Store, gc

# What the packaged storage=default keeps in its directory (data/): anything else there is a
# user's, and mixing the two means a `rm -r data` or a store copied elsewhere takes it along.
STORE_FILES = ("wtb.db", "checkpoints.db", "blobs")


def foreign_files(db: str) -> list[str]:
    """The files beside a SQLite store (in its directory) that are not the store's."""
    if "://" in db and not db.startswith("sqlite:///"):
        return []
    path = Path(db.removeprefix("sqlite:///"))
    if not path.parent.is_dir():
        return []
    ours = {n + s for n in STORE_FILES for s in ("", "-wal", "-shm", "-journal")}
    return sorted(p.name for p in path.parent.iterdir() if p.name not in ours
                  and p.name != path.name and not p.name.startswith(path.name + "-"))


def mixed_note(db: str) -> str | None:
    """The note for a store directory that holds a user's files too (docs/store.md)."""
    if not (others := foreign_files(db)):
        return None
    where = Path(db.removeprefix("sqlite:///")).parent
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    return (f"{where}/ holds files that are not the store's ({shown}): keep your inputs "
            "elsewhere (e.g. inputs/), or put the store elsewhere (storage.db_url, "
            "storage.blob_root, storage.checkpoints)")


def cmd_fsck(store: Store, args: argparse.Namespace) -> int:
    from wtb_conf.store import fsck

    checkpoints = checkpoints_of(args)
    report = fsck.check(store, checkpoints)
    found = done = None
    if args.repair:
        done = fsck.repair(store, report)
        found, report = report, fsck.check(store, checkpoints)  # what is left
    if note := mixed_note(args.db):
        report.notes.append(note)
    if args.json:
        print_json(report.as_dict() | {"repaired": asdict(done) if done else None})
    else:
        output.print_fsck(report, found, done)
    return 0 if report.clean else 1


def cmd_rm(store: Store, args: argparse.Namespace) -> int:
    runs, sweeps = [], []
    for ref in args.refs:
        kind, found = run_or_sweep(store, ref)
        (runs if kind == "run" else sweeps).append(found)
    result = gc.remove(store, runs, sweeps, checkpoints_of(args), dry_run=args.dry_run)
    if args.json:
        print_json(gc.as_dict(result) | {"dry_run": args.dry_run})
        return 0
    output.print_removal(result, args.dry_run)
    return 0


def cmd_gc(store: Store, args: argparse.Namespace) -> int:
    result = gc.collect(store, checkpoints_of(args), dry_run=args.dry_run)
    if args.json:
        print_json(gc.as_dict(result) | {"dry_run": args.dry_run})
        return 0
    output.print_collected(result, args.dry_run)
    return 0

