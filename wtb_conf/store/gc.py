"""Removing what a user no longer wants: `wtb rm` (runs and sweeps, with what only they
needed) and `wtb gc` (what nothing needs any more). docs/store.md, "Removing runs".

`remove()` deletes, in ONE write transaction, the runs' records (run rows, case threads,
checkpoint links, events, evaluations, and the sweeps named or left empty), the commits only
they named (their final, step and inputs commits, with the ancestors nothing else needs),
and the blob rows (with their stat cache rows) that only those commits reached. Then, the
database committed, it unlinks those blobs' files and deletes the runs' LangGraph threads
with the checkpointer's own `delete_thread` (the caller hands in the checkpointer:
store/checkpoint_store.py). A crash before the commit changes nothing; one
after it leaves the store consistent (nothing names what is gone): at worst blob files no
row names (`orphan_file`) and LangGraph threads of no run, which `collect()` removes.

`collect()` (`wtb gc`) is `wtb fsck --repair`'s removal of orphans (wtb_conf.store.fsck),
plus the LangGraph threads whose run is no longer in the store. Neither removes a commit
that anything names: a commit is a record (you may commit with the Python API).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, text

from wtb_conf.store.errors import StoreError
from wtb_conf.store.fsck import _in
from wtb_conf.store.lifecycle import running_owners
from wtb_conf.store.liveness import alive
from wtb_conf.store.schema import lock, read_conn

if TYPE_CHECKING:
    from wtb_conf.store import Store
    from wtb_conf.store.checkpoint_store import CheckpointStore

_BLOB_NAME = re.compile(r"[0-9a-f]{64}")
# a case thread's id, as wtb_conf.job.task names it: RUN_ID/CASE
_THREAD_ID = re.compile(r"([0-9a-f]{32})/[^/]+")


@dataclass
class Removal:
    """What `remove()` removed (or, dry, would remove)."""

    runs: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # blob files, of `blobs`
    checkpoint_threads: list[str] = field(default_factory=list)  # LangGraph's, deleted
    skipped: list[str] = field(default_factory=list)  # what was left, and why


def _select(conn: Connection, sql: str, ids: Iterable[str]) -> list:
    return _in(conn, sql, sorted(set(ids)))


def _busy(conn: Connection) -> list[str]:
    """Runs and sweeps running with a live (or uncheckable) owner."""
    return [f"{table[:-1]} {obj[:8]}" for table, obj, owner in running_owners(conn)
            if owner.host and alive(owner) is not False]


def _runs_of(conn: Connection, run_ids: Iterable[str], sweep_ids: Iterable[str]) -> set[str]:
    runs = set(run_ids)
    runs.update(r[0] for r in _select(conn, "SELECT id FROM runs WHERE sweep_id IN :ids",
                                      sweep_ids))
    return runs


def _refuse(conn: Connection, runs: set[str], sweeps: set[str]) -> None:
    """A running run or sweep, or a run another run needs, is not removed."""
    for obj, status in _select(conn, "SELECT id, status FROM runs WHERE id IN :ids", runs):
        if status == "running":
            raise StoreError(f"run {obj[:8]} is running: stop it (or let it end) first")
    for obj, status in _select(conn, "SELECT id, status FROM sweeps WHERE id IN :ids", sweeps):
        if status == "running":
            raise StoreError(f"sweep {obj[:8]} is running: stop it (or let it end) first")
    if busy := _busy(conn):
        # commits are content-addressed: one in flight may name a commit or blob removed here
        raise StoreError(f"{', '.join(busy)} is running; its commits may reuse what would be "
                         "removed: run `wtb rm` again when it has ended")
    for obj, cached, parent in _select(
            conn, "SELECT id, cached_from, parent_run FROM runs WHERE cached_from IN :ids "
                  "OR parent_run IN :ids", runs):
        if obj not in runs:
            how, of = ("a cache hit", cached) if cached in runs else ("forked", parent)
            raise StoreError(f"run {of[:8]} is needed by run {obj[:8]} ({how} of it): "
                             f"remove both (`wtb rm {of[:8]} {obj[:8]}`), or neither")


def _tree_blobs(store: Store, conn: Connection, trees: Iterable[str]) -> dict[str, set[str]]:
    """tree -> the blobs its entries name; a tree that cannot be read or parsed is left out."""
    out: dict[str, set[str]] = {}
    for tree, data in _select(conn, "SELECT id, data FROM blobs WHERE id IN :ids", trees):
        try:
            if data is None:
                data = b"".join(store.blobs.chunks(tree))
            # a tree is {"entries": [[path, blob, size, mode], ...]} (docs/store.md)
            out[tree] = {e[1] for e in json.loads(bytes(data))["entries"]}
        except (OSError, StoreError, ValueError, KeyError, TypeError, IndexError):
            continue
    return out


def _plan(store: Store, conn: Connection, runs: set[str], sweeps: set[str]) -> Removal:
    """What removing `runs` (and the sweeps `sweeps`) takes with it, read through `conn`."""
    plan = Removal(runs=sorted(runs))
    threads = _select(conn, "SELECT thread_id, commit_id FROM threads WHERE run_id IN :ids",
                      runs)
    plan.threads = sorted(t[0] for t in threads)
    named = {c for t in threads for c in t[1:] if c}
    named.update(c for r in _select(conn, "SELECT commit_id, inputs_commit FROM runs WHERE id "
                                    "IN :ids", runs) for c in r if c)
    named.update(r[0] for r in _select(conn, "SELECT DISTINCT commit_id FROM checkpoint_links "
                                       "WHERE run_id IN :ids", runs))
    # every sweep left with no run goes too
    left = {r[0] for r in _select(conn, "SELECT DISTINCT sweep_id FROM runs WHERE id IN :ids",
                                  runs)}
    still = {s for r, s in _select(conn, "SELECT id, sweep_id FROM runs WHERE sweep_id IN :ids",
                                   left) if r not in runs}
    plan.sweeps = sorted(sweeps | (left - still))

    commits = {c.id: c for c in conn.execute(text("SELECT id, tree, parent FROM commits"))}
    candidates, todo = set(), [c for c in named if c in commits]
    while todo:  # the commits named, and their ancestors
        c = todo.pop()
        if c not in candidates:
            candidates.add(c)
            if commits[c].parent in commits:
                todo.append(commits[c].parent)
    # what stays names its commits, and a commit that stays keeps its parent
    kept = set(commits) - candidates
    for sql in ("SELECT commit_id, inputs_commit FROM runs WHERE id NOT IN {}",
                "SELECT commit_id, NULL FROM threads WHERE run_id NOT IN {}",
                "SELECT commit_id, NULL FROM checkpoint_links WHERE run_id NOT IN {}"):
        query = text(sql.format(":runs")).bindparams(bindparam("runs", expanding=True))
        for row in conn.execute(query, {"runs": sorted(runs) or [""]}):
            kept.update(c for c in row if c in commits)
    todo = list(kept)
    while todo:
        parent = commits[todo.pop()].parent
        if parent in commits and parent not in kept:
            kept.add(parent)
            todo.append(parent)
    plan.commits = sorted(candidates - kept)

    gone_trees = {commits[c].tree for c in plan.commits}
    kept_trees = {commits[c].tree for c in kept}
    reach = _tree_blobs(store, conn, gone_trees | kept_trees)
    if not kept_trees <= reach.keys():  # what an unreadable tree reaches cannot be known
        plan.skipped.append("blobs left alone: a commit that stays has a missing or corrupt "
                            "tree (`wtb fsck`)")
        return plan
    needed = kept_trees.union(*(reach[t] for t in kept_trees))
    maybe = gone_trees.union(*(reach.get(t, set()) for t in gone_trees))
    rows = _select(conn, "SELECT id, data IS NULL FROM blobs WHERE id IN :ids", maybe - needed)
    plan.blobs = sorted(r[0] for r in rows)
    plan.files = sorted(str(store._blob_path(r[0])) for r in rows
                        if r[1] and _BLOB_NAME.fullmatch(r[0]))
    return plan


def _delete(conn: Connection, plan: Removal) -> None:
    runs, commits, blobs = plan.runs, plan.commits, plan.blobs
    _in(conn, "DELETE FROM evaluations WHERE run_id IN :ids", runs)
    _in(conn, "DELETE FROM events WHERE run_id IN :ids", runs)
    _in(conn, "DELETE FROM events WHERE run_id IS NULL AND sweep_id IN :ids", plan.sweeps)
    _in(conn, "DELETE FROM checkpoint_links WHERE run_id IN :ids", runs)
    _in(conn, "DELETE FROM threads WHERE run_id IN :ids", runs)
    # (the runs may name each other; each chunk of DELETE is checked on its own)
    _in(conn, "UPDATE runs SET cached_from = NULL, parent_run = NULL WHERE id IN :ids", runs)
    _in(conn, "DELETE FROM runs WHERE id IN :ids", runs)
    _in(conn, "DELETE FROM sweeps WHERE id IN :ids", plan.sweeps)
    _in(conn, "UPDATE commits SET parent = NULL WHERE id IN :ids", commits)
    _in(conn, "DELETE FROM commits WHERE id IN :ids", commits)
    _in(conn, "DELETE FROM stat_cache WHERE blob IN :ids", blobs)  # a cache: its rows go
    _in(conn, "DELETE FROM blobs WHERE id IN :ids", blobs)


def remove(store: Store, run_ids: Iterable[str], sweep_ids: Iterable[str],
           checkpoints: CheckpointStore | None, dry_run: bool = False) -> Removal:
    """Remove runs, sweeps (with their runs) and what only they needed; `checkpoints`: the
    LangGraph checkpointer their threads are in (None: leave them). `dry_run`: what would go,
    read in one snapshot, nothing changed (the store may be read-only)."""
    sweeps = set(sweep_ids)
    if dry_run:
        with read_conn(store.engine) as conn:
            conn.exec_driver_sql("BEGIN" if conn.dialect.name == "sqlite" else
                                 "BEGIN ISOLATION LEVEL REPEATABLE READ")
            try:
                runs = _runs_of(conn, run_ids, sweeps)
                _refuse(conn, runs, sweeps)
                return _plan(store, conn, runs, sweeps)
            finally:
                conn.exec_driver_sql("ROLLBACK")
    if store.readonly:
        raise StoreError("removing needs a store opened for writing")
    with store.engine.begin() as conn:  # BEGIN IMMEDIATE: no commit lands while we decide
        lock(conn, "blobs")  # (PostgreSQL: every commit_dir holds it shared)
        runs = _runs_of(conn, run_ids, sweeps)
        _refuse(conn, runs, sweeps)
        plan = _plan(store, conn, runs, sweeps)
        _delete(conn, plan)
    for path in plan.files:  # their rows are gone for good
        store.blobs.remove(path)
    if checkpoints is not None and plan.threads:
        plan.checkpoint_threads = checkpoints.delete_threads(plan.threads)
    return plan


@dataclass
class Collected:
    """What `collect()` removed (or, dry, would remove)."""

    orphans: dict[str, list] = field(default_factory=dict)  # fsck's: files, blobs, stat_cache
    checkpoint_threads: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def collect(store: Store, checkpoints: CheckpointStore | None,
            dry_run: bool = False) -> Collected:
    """`wtb gc`: remove what nothing needs: the orphans `wtb fsck` finds (as `--repair` does,
    with its cautions) and LangGraph threads of runs that are no longer in the store."""
    from wtb_conf.store import fsck

    report = fsck.check(store, None)
    done = Collected()
    stray: list[str] = []
    if checkpoints is not None:
        with read_conn(store.engine) as conn:
            if busy := _busy(conn):
                done.skipped.append(f"LangGraph threads left alone: {', '.join(busy)} is "
                                    "running")
            else:
                found = [t for t in checkpoints.thread_ids() if _THREAD_ID.fullmatch(t)]
                runs = {m.group(1) for t in found if (m := _THREAD_ID.fullmatch(t))}
                known = {r[0] for r in _select(conn, "SELECT id FROM runs WHERE id IN :ids",
                                               runs)}
                stray = [t for t in found if t.split("/")[0] not in known]
    if dry_run:
        done.orphans = report.orphans
        done.checkpoint_threads = stray
        return done
    repaired = fsck.repair(store, report)
    done.orphans, done.skipped = repaired.removed, done.skipped + repaired.skipped
    if stray:
        with read_conn(store.engine) as conn:  # a run made since with that id keeps its own
            if busy := _busy(conn):
                done.skipped.append(f"LangGraph threads left alone: {', '.join(busy)} is "
                                    "running")
                return done
        done.checkpoint_threads = checkpoints.delete_threads(stray)
    return done


def as_dict(result: Removal | Collected) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(result)
