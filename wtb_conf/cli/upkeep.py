"""`wtb fsck`, `rm` and `gc`: keeping the store whole, and removing what is not wanted."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from wtb_conf.cli import output
from wtb_conf.cli.common import print_json
from wtb_conf.cli.options import (
    checkpoints_of,
    checkpoints_option,
    dry_run_option,
    json_option,
    store_at,
    store_command,
)
from wtb_conf.job.checkpointer import Checkpoints
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


# fsck --repair writes: only then is the store opened for writing
@store_command("fsck", "check the store is whole: objects, links, statuses, orphans "
                       "(read-only unless --repair)",
               readonly=lambda params: not params["repair"], notes=False)
@checkpoints_option
@click.option("--repair", is_flag=True,
              help="remove orphans and mark runs a dead process left running failed")
@json_option
def cmd_fsck(store: Store, checkpoints: str | None, repair: bool, as_json: bool) -> int:
    from wtb_conf.store import fsck

    db = store_at().db
    checkpoints = Checkpoints(checkpoints_of(checkpoints, db))
    report = fsck.check(store, checkpoints)
    found = done = None
    if repair:
        done = fsck.repair(store, report)
        found, report = report, fsck.check(store, checkpoints)  # what is left
    if note := mixed_note(db):
        report.notes.append(note)
    if as_json:
        print_json(report.as_dict() | {"repaired": asdict(done) if done else None})
    else:
        output.print_fsck(report, found, done)
    return 0 if report.clean else 1


# --dry-run changes nothing: the store is opened read-only
@store_command("rm", "remove runs and sweeps, and the commits, blobs and LangGraph checkpoints "
                     "only they needed", readonly=lambda params: params["dry_run"])
@click.argument("refs", nargs=-1, required=True, metavar="RUN|SWEEP...")
@dry_run_option("list what would be removed; change nothing (opens the store read-only)")
@checkpoints_option
@json_option
def cmd_rm(store: Store, refs: tuple[str, ...], dry_run: bool, checkpoints: str | None,
           as_json: bool) -> int:
    """RUN|SWEEP...: run or sweep ids (or unique prefixes), or 'last' (the last sweep)."""
    runs, sweeps = [], []
    for ref in refs:
        kind, found = store.run_or_sweep(ref)
        (runs if kind == "run" else sweeps).append(found)
    checkpoints = Checkpoints(checkpoints_of(checkpoints, store_at().db))
    result = gc.remove(store, runs, sweeps, checkpoints, dry_run=dry_run)
    if as_json:
        print_json(gc.as_dict(result) | {"dry_run": dry_run})
        return 0
    output.print_removal(result, dry_run)
    return 0


@store_command("gc", "remove what nothing needs: fsck's orphans and LangGraph threads of runs "
                     "no longer in the store",
               readonly=lambda params: params["dry_run"], notes=False)
@dry_run_option("list what would be removed; change nothing")
@checkpoints_option
@json_option
def cmd_gc(store: Store, dry_run: bool, checkpoints: str | None, as_json: bool) -> int:
    checkpoints = Checkpoints(checkpoints_of(checkpoints, store_at().db))
    result = gc.collect(store, checkpoints, dry_run=dry_run)
    if as_json:
        print_json(gc.as_dict(result) | {"dry_run": dry_run})
        return 0
    output.print_collected(result, dry_run)
    return 0


COMMANDS = (cmd_fsck, cmd_rm, cmd_gc)

