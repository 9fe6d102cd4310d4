"""`wtb fsck`: is the store whole? And the repairs that are safe to make (docs/cli.md).

`check()` first runs SQLite's integrity check on both databases (integrity.py; a damaged
store is one problem, and nothing in it is read further). Then it reads everything once, in
one database snapshot (fsck_objects.py checks every column it trusts for type and shape):
every commit's tree and every blob
a commit reaches (inline rows and files) must exist and re-hash to its id; every commit a
commit, run, case thread or checkpoint link names must exist, and every link's LangGraph
checkpoint too; every run's and sweep's status must agree with its events; and it lists what
nothing needs (orphans) and what a dead process left running.

Commits are never orphans: a user may commit directly, and a commit is a record. An orphan is
a blob no commit reaches: a `blobs` row that is neither a commit's tree nor an entry of one
(and the `stat_cache` rows, a cache, that point at it), a blob file no row names, or a `.tmp-*`
file a writer left behind. A file younger than `grace` may be a commit in flight (its file is
written before its row): it is a note, not a problem, and `repair()` leaves it alone.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, text

from wtb_conf.store.blobdirs import blob_id_of
from wtb_conf.store.errors import StoreError, StoreMalformed
from wtb_conf.store.fsck_objects import check_objects
from wtb_conf.store.integrity import check_checkpoints_db, check_store_db
from wtb_conf.store.lifecycle import lost_error, running_owners
from wtb_conf.store.liveness import alive
from wtb_conf.store.schema import lock, read_conn, shown
from wtb_conf.store.trees import TreeError
from wtb_conf.store.trees import parse as parse_tree

if TYPE_CHECKING:
    from wtb_conf.store import Store
    from wtb_conf.store.checkpoint_store import CheckpointStore

GRACE_S = 3600.0  # an orphan file younger than this may belong to a commit in flight
_IN = 500  # ids per IN (...): well below SQLite's bound-parameter limit
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")

# What `repair()` does about each kind of problem; the kinds not here it leaves alone.
REPAIRS = {
    "lost_run": "mark it failed, with a run_lost event",
    "lost_sweep": "mark it failed, with a sweep_lost event",
    "orphan_blob": "delete the row (and its file)",
    "orphan_stat_cache": "delete the cache row",
    "orphan_file": "delete the file",
    "orphan_tmp": "delete the file",
}
RUN_ENDS = {"completed": ("run_completed",), "failed": ("run_failed", "run_lost"),
            "cached": ("run_cached",), "paused": ("run_paused",)}
SWEEP_ENDS = {"completed": ("sweep_finished",), "failed": ("sweep_finished", "sweep_lost")}


@dataclass
class Problem:
    kind: str
    object: str  # the id (or path) of what is wrong
    message: str

    @property
    def repair(self) -> str | None:
        return REPAIRS.get(self.kind)


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    # what repair() removes: blob file paths, blob ids, [root, path] of stat_cache rows
    orphans: dict[str, list] = field(
        default_factory=lambda: {"files": [], "blobs": [], "stat_cache": []})
    lost: dict[str, list[str]] = field(default_factory=lambda: {"runs": [], "sweeps": []})
    commits: set[str] = field(default_factory=set, repr=False)  # those checked

    @property
    def clean(self) -> bool:
        return not self.problems

    def add(self, kind: str, obj: str, message: str) -> None:
        self.problems.append(Problem(kind, obj, message))

    def by_kind(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = defaultdict(list)
        for p in self.problems:
            out[p.kind].append(p)
        return dict(out)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of `wtb fsck --json` (keys documented in docs/cli.md)."""
        return {"clean": self.clean, "checked": self.checked,
                "counts": {k: len(v) for k, v in self.by_kind().items()},
                "problems": [asdict(p) | {"repair": p.repair} for p in self.problems],
                "notes": self.notes, "orphans": self.orphans, "lost": self.lost}


def _in(conn: Connection, sql: str, ids: list[str]) -> list:
    """`sql` (with `IN :ids`) for every chunk of ids; the rows, for a query."""
    query = text(sql).bindparams(bindparam("ids", expanding=True))
    out: list = []
    for i in range(0, len(ids), _IN):
        result = conn.execute(query, {"ids": ids[i:i + _IN]})
        out += result.all() if result.returns_rows else []
    return out


def _entries(data: bytes) -> list[list]:
    """A tree's [path, blob, size, mode] entries, checked (trees.py): a malformed tree raises
    TreeError, a ValueError."""
    return [[p, *e] for p, e in parse_tree(data).items()]


def check(store: Store, checkpoints: CheckpointStore | None,
          grace: float = GRACE_S) -> Report:
    """Check the whole store; `checkpoints`: LangGraph's checkpointer its links point into
    (wtb_conf.job.checkpointer.Checkpoints; None: links are checked against commits only)."""
    report = Report()
    check_checkpoints_db(checkpoints, report)
    if not check_store_db(store, report):
        report.notes.append("the store's database is damaged: its objects, links and statuses "
                            "were not checked")
        return report
    try:
        return _check(store, checkpoints, grace, report)
    except StoreMalformed as e:  # a page the integrity check passed, damaged since
        report.add("malformed_db", shown(store.engine), str(e))
        return report


def _check(store: Store, checkpoints: CheckpointStore | None, grace: float,
           report: Report) -> Report:
    # Files are listed before the snapshot: a commit writes its blob files before its rows,
    # so every row the snapshot holds has its file on disk by then.
    files, tmps, odd = store.blobs.scan()
    with read_conn(store.engine) as conn:
        # one snapshot for every query: a sweep may be writing (PostgreSQL: REPEATABLE READ)
        conn.exec_driver_sql("BEGIN" if conn.dialect.name == "sqlite" else
                             "BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            known = check_objects(store, conn, report)
            links = _check_refs(conn, report)
            _check_statuses(conn, report)
            cache = conn.execute(text("SELECT root, path, blob FROM stat_cache")).all()
        finally:
            conn.exec_driver_sql("ROLLBACK")
    # A link is written after its checkpoint: read LangGraph's file after the snapshot.
    _check_links(links, checkpoints, report)
    _check_owners(store, report)
    orphan_rows = set(report.orphans["blobs"])
    for root, path, blob in cache:
        if blob in orphan_rows or blob not in known:
            report.orphans["stat_cache"].append([root, path])
            report.add("orphan_stat_cache", f"{root}/{path}", f"stat cache row {root} : {path} "
                       f"points at blob {blob}, which no commit reaches")
    # A file whose row is missing but that a commit reaches is that commit's: not an orphan.
    candidates = [(p, f"{p} (blob {b}) is a blob file no blob row names", "orphan_file")
                  for b, p in files.items() if b not in known]
    candidates += [(p, f"{p} is a temp file a writer left", "orphan_tmp") for p in tmps]
    for path, message, kind in candidates:
        # (an object store's clock, S3's LastModified, is the server's)
        if (mtime := store.blobs.modified(path)) is None:
            continue  # renamed into place or removed since the listing
        if mtime > time.time() - grace:
            report.notes.append(f"{message}, but younger than {grace:g} s: it may be a commit "
                                "in flight; left alone")
        else:
            report.orphans["files"].append(path)
            report.add(kind, path, message)
    report.notes += [f"{p} is not a blob file; left alone" for p in odd]
    report.checked["files"] = len(files)
    return report


def _check_refs(conn: Connection, report: Report) -> list:
    """Commits that runs, threads and links name must exist. Returns the links."""
    commits = report.commits
    for sql, what in (("SELECT id, commit_id FROM runs", "run {} ends at commit {}"),
                      ("SELECT id, inputs_commit FROM runs", "run {} has inputs commit {}"),
                      ("SELECT thread_id, commit_id FROM threads", "case thread {} ends at "
                                                                    "commit {}")):
        for obj, commit in conn.execute(text(sql)):
            if commit is not None and commit not in commits:
                report.add("missing_commit", obj,
                           f"{what.format(obj, commit)}, which is not in the store")
    links = conn.execute(text("SELECT thread_id, checkpoint_ns, checkpoint_id, run_id, "
                              "commit_id FROM checkpoint_links")).all()
    for link in links:
        if link.commit_id not in commits:
            report.add("link_missing_commit", link.checkpoint_id,
                       f"checkpoint {link.checkpoint_id} of thread {link.thread_id} (run "
                       f"{link.run_id}) links to commit {link.commit_id}, which is not in "
                       "the store")
    report.checked["links"] = len(links)
    return links


def _check_links(links: list, checkpoints: CheckpointStore | None, report: Report) -> None:
    """Every link's (thread, namespace, checkpoint) must be in LangGraph's checkpointer: its
    SQLite file or its PostgreSQL database, read only."""
    if not links:
        return
    if checkpoints is None:
        report.notes.append(f"no LangGraph checkpoints file given: the {len(links)} links "
                            "were checked against commits only")
        return
    where = checkpoints.describe()
    try:
        absent = checkpoints.missing([(link.thread_id, link.checkpoint_ns,
                                       link.checkpoint_id) for link in links])
    except StoreError as e:  # (the checkpointer's CheckpointsError)
        report.add("checkpoints_file", where, f"{e}: the {len(links)} checkpoint links cannot "
                   "be checked")
        return
    for link in links:
        if (link.thread_id, link.checkpoint_ns, link.checkpoint_id) in absent:
            report.add("link_missing_checkpoint", link.checkpoint_id,
                       f"checkpoint {link.checkpoint_id} of thread {link.thread_id} (run "
                       f"{link.run_id}) is linked to commit {link.commit_id} but is not in "
                       f"{where}")


def _check_statuses(conn: Connection, report: Report) -> None:
    """A run's (sweep's) newest status event must be the one its status says."""
    for table, prefix, ends in (("runs", "run", RUN_ENDS), ("sweeps", "sweep", SWEEP_ENDS)):
        kinds = [f"{prefix}_started", *{k for v in ends.values() for k in v}]
        # sweep events have no run_id (index events_run covers both filters)
        owner = "run_id" if table == "runs" else "sweep_id"
        where = "run_id IS NOT NULL" if table == "runs" else "run_id IS NULL"
        newest: dict[str, dict[str, int]] = defaultdict(dict)
        for obj, kind, last in _in(conn, f"SELECT {owner}, kind, max(id) FROM events WHERE "
                                   f"{where} AND kind IN :ids GROUP BY {owner}, kind", kinds):
            newest[obj][kind] = last
        rows = conn.execute(text(f"SELECT id, status FROM {table}")).all()
        for obj, status in rows:
            seen = newest.get(obj, {})
            last = max(seen, key=seen.__getitem__) if seen else None
            if f"{prefix}_started" not in seen:
                why = f"has no {prefix}_started event"
            elif status == "running":
                why = None if last == f"{prefix}_started" else f"has a {last} event"
            elif status not in ends:
                why = "is not a known status"
            else:
                why = None if last in ends[status] else \
                    f"has no {' or '.join(ends[status])} event after {last}"
            if why:
                report.add(f"{prefix}_events", obj, f"{prefix} {obj} is {status} but {why}")
        report.checked[table] = len(rows)


def _check_owners(store: Store, report: Report) -> None:
    """Running runs and sweeps whose process died (problems), or cannot be checked (notes)."""
    with read_conn(store.engine) as conn:
        running = running_owners(conn)
    for table, obj, owner in running:
        what = table[:-1]
        state = alive(owner)
        if state is False:
            report.lost[table].append(obj)
            report.add(f"lost_{what}", obj, f"{what} {obj} is running but {lost_error(owner)}")
        elif state is None:
            where = f"on {owner.host.split('/')[0]}" if owner.host else "not recorded"
            report.notes.append(f"{what} {obj} is running; its process ({where}) cannot be "
                                "checked from here")


@dataclass
class Repaired:
    """What repair() did: the runs and sweeps it failed, what it removed, and what it left
    alone and why."""

    reaped: dict[str, list[str]] = field(default_factory=lambda: {"runs": [], "sweeps": []})
    removed: dict[str, list] = field(
        default_factory=lambda: {"files": [], "blobs": [], "stat_cache": []})
    skipped: list[str] = field(default_factory=list)


def _not_reached_since(store: Store, conn: Connection, report: Report, blobs: set[str],
                       done: Repaired) -> set[str]:
    """The orphan `blobs` that no commit made since the check reaches (what those reach
    stays); none at all, with a note in `done`, if such a commit's tree cannot be read."""
    newer = [r for r in conn.execute(text("SELECT id, tree FROM commits"))
             if r.id not in report.commits]
    for commit, tree in newer:
        blobs.discard(tree)
        try:
            blobs.difference_update(e.blob for e in parse_tree(store.read_blob(tree)).values())
        except (StoreError, TreeError):
            done.skipped.append(f"orphan blobs left alone: commit {commit}, made since "
                                "the check, has an unreadable tree")
            blobs = set()
    return blobs


def repair(store: Store, report: Report) -> Repaired:
    """Fail what dead processes left running (`store.reap()`), then remove the orphans
    `report` found, in one write transaction that re-checks each of them under the store's
    write lock. Never deletes anything a commit reaches; deletes no orphan at all while a run
    or sweep is running (theirs may be about to be reused by a commit in flight)."""
    if store.readonly:
        raise StoreError("repair needs a store opened for writing")
    done = Repaired()
    if report.lost["runs"] or report.lost["sweeps"]:
        done.reaped = store.reap()
    orphans = report.orphans
    if not any(orphans.values()):
        return done
    blobs = set(orphans["blobs"])
    if any(p.kind in ("missing_tree", "corrupt_tree") for p in report.problems):
        # the blobs such a tree reached cannot be told from orphans: delete no blob row
        done.skipped.append("orphan blobs left alone: a commit's tree is missing or corrupted")
        blobs = set()
    unlink_after: list[str] = []
    with store.engine.begin() as conn:  # BEGIN IMMEDIATE: no commit lands while we decide
        lock(conn, "blobs")  # (PostgreSQL: every commit_dir holds it shared)
        # A run or sweep still running (a live process, or one on another host; not one an
        # older wtb_conf left with no owner) may be about to reuse an orphan in a commit.
        busy = [f"{table[:-1]} {obj}" for table, obj, owner in running_owners(conn)
                if owner.host and alive(owner) is not False]
        if busy:
            done.skipped.append(f"orphans left alone: {', '.join(busy)} is still running")
            return done
        ids = sorted(_not_reached_since(store, conn, report, blobs, done))
        # the cache first: its rows name blobs (a foreign key), and a cached blob is reused
        if orphans["stat_cache"]:
            conn.execute(text("DELETE FROM stat_cache WHERE root = :r AND path = :p"),
                         [{"r": r, "p": p} for r, p in orphans["stat_cache"]])
        done.removed["stat_cache"] = orphans["stat_cache"]
        _in(conn, "DELETE FROM stat_cache WHERE blob IN :ids", ids)
        unlink_after += [str(store._blob_path(r[0])) for r in _in(
            conn, "SELECT id FROM blobs WHERE data IS NULL AND id IN :ids", ids)
            if _BLOB_NAME.fullmatch(r[0])]  # a forged id names no file of ours
        _in(conn, "DELETE FROM blobs WHERE id IN :ids", ids)
        done.removed["blobs"] = ids
        # A blob file that a row names now was adopted by a commit since the check: it stays.
        paths = orphans["files"]  # each older than the grace period
        named = {r[0] for r in _in(conn, "SELECT id FROM blobs WHERE id IN :ids",
                                   [blob_id_of(p) for p in paths])}
        for path in paths:
            if blob_id_of(path) not in named and store.blobs.modified(path) is not None:
                store.blobs.remove(path)
                done.removed["files"].append(path)
    for path in unlink_after:  # the rows are gone for good: their files go too
        store.blobs.remove(path)
        done.removed["files"].append(path)
    return done
