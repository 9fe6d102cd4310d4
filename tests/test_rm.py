"""`wtb rm` and `wtb gc` on a copy of the demo sweep's store: what goes, what stays (byte for
byte), what is refused, and a crash in the middle."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_bench

from wtb_conf.cli import main
from wtb_conf.store.liveness import this_process


def wtb(project: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    """`wtb ARGS` in `project`, in this process (the console script is tested elsewhere)."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            got = main(list(args))
    finally:
        os.chdir(cwd)
    proc = subprocess.CompletedProcess(args, got, out.getvalue(), err.getvalue())
    assert got == code, proc.stdout + proc.stderr
    return proc


def data_digest(project: Path) -> dict[str, str]:
    """Every file under data/, hashed (an empty -wal and the -shm index are no data)."""
    data = project / "data"
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file() and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and not p.stat().st_size)}


def restored(project: Path, run: str, dest: Path, checkpoint: str | None = None) -> dict:
    args = ["--checkpoint", checkpoint] if checkpoint else []
    wtb(project, "restore", run, *args, "--to", str(dest))
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*"))
            if p.is_file()}


def reached(project: Path, commits: set[str]) -> set[str]:
    """The blobs (trees included) those commits reach."""
    with sqlite3.connect(project / "data/wtb.db") as db:
        out = set()
        for commit in commits:
            tree = db.execute("SELECT tree FROM commits WHERE id = ?", (commit,)).fetchone()[0]
            data = db.execute("SELECT data FROM blobs WHERE id = ?", (tree,)).fetchone()[0]
            out |= {tree} | {e[1] for e in json.loads(data)["entries"]}
        return out


def commits_of(project: Path, run: str) -> set[str]:
    with sqlite3.connect(project / "data/wtb.db") as db:
        rows = db.execute("SELECT commit_id FROM checkpoint_links WHERE run_id = ? UNION "
                          "SELECT commit_id FROM runs WHERE id = ? UNION SELECT inputs_commit "
                          "FROM runs WHERE id = ?", (run, run, run)).fetchall()
        out, todo = set(), [r[0] for r in rows if r[0]]
        while todo:  # and their ancestors: a commit keeps its parent
            if (commit := todo.pop()) not in out:
                out.add(commit)
                parent = db.execute("SELECT parent FROM commits WHERE id = ?",
                                    (commit,)).fetchone()[0]
                todo += [parent] if parent else []
    return out


def lg_threads(project: Path) -> set[str]:
    with sqlite3.connect(project / "data/checkpoints.db") as db:
        return {r[0] for r in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}


@pytest.fixture
def project(demo, tmp_path) -> Path:
    """A private copy of the demo project (the session's demo is shared, read-only)."""
    dest = tmp_path / "project"
    shutil.copytree(demo, dest)
    return dest


def runs(project: Path) -> list[dict]:
    return json.loads(wtb(project, "runs", "--json").stdout)


def test_rm_one_run_removes_only_what_it_alone_needed(project, tmp_path):
    before = runs(project)
    gone, others = before[0]["run_id"], [r["run_id"] for r in before[1:]]
    # every other run's files, final and at each checkpoint, before
    kept = {}
    for run in others:
        kept[run] = restored(project, run, tmp_path / "before" / run / "final")
        for case in json.loads(wtb(project, "show", run, "--json").stdout)["cases"]:
            for cp in case["checkpoints"]:
                kept[run, cp["checkpoint_id"]] = restored(
                    project, run, tmp_path / "before" / run / cp["checkpoint_id"],
                    cp["checkpoint_id"])
    only_gone = reached(project, commits_of(project, gone)) - set().union(
        *(reached(project, commits_of(project, r)) for r in others))
    assert only_gone  # (its own final outputs: the test would prove nothing otherwise)

    digest = data_digest(project)
    dry = wtb(project, "rm", gone[:8], "--dry-run").stdout
    assert f"would remove: run {gone}" in dry and "dry run: nothing changed" in dry
    assert data_digest(project) == digest  # --dry-run changes nothing

    out = wtb(project, "rm", gone[:8]).stdout
    assert f"removed: run {gone}" in out and "2 LangGraph threads" in out
    assert [r["run_id"] for r in runs(project)] == others
    fsck = wtb(project, "fsck", "--json")
    assert json.loads(fsck.stdout)["clean"], fsck.stdout
    with sqlite3.connect(project / "data/wtb.db") as db:
        left = {r[0] for r in db.execute("SELECT id FROM blobs")}
        for table in ("runs", "threads", "checkpoint_links", "events", "evaluations"):
            column = "id" if table == "runs" else "run_id"
            assert not db.execute(f"SELECT 1 FROM {table} WHERE {column} = ?",  # noqa: S608
                                  (gone,)).fetchall(), table
    assert not only_gone & left  # the blobs only it reached are gone
    assert not {t for t in lg_threads(project) if t.startswith(gone)}  # and its checkpoints
    for run in others:  # the other runs still restore, byte for byte
        assert restored(project, run, tmp_path / "after" / run / "final") == kept[run]
        for case in json.loads(wtb(project, "show", run, "--json").stdout)["cases"]:
            for cp in case["checkpoints"]:
                cid = cp["checkpoint_id"]
                assert restored(project, run, tmp_path / "after" / run / cid, cid) == kept[run, cid]
    assert "removed 0 blobs" in wtb(project, "gc").stdout  # nothing left over


@pytest.mark.slow
def test_rm_a_sweep_and_what_is_refused(project):
    sweep = runs(project)[0]["sweep_id"]
    err = wtb(project, "rm", "ffffffff", code=1).stderr
    assert "wtb: error: 'ffffffff' is neither a run nor a sweep" in err
    # a cache hit needs the run it reports: that run alone is refused
    run_bench(project, "-m", "+experiment=demo")
    hit = runs(project)[-1]
    assert hit["status"] == "cached"
    err = wtb(project, "rm", hit["cached_from"][:8], code=1).stderr
    assert f"run {hit['cached_from'][:8]} is needed by run {hit['run_id'][:8]} (a cache hit " \
           "of it)" in err
    digest = data_digest(project)
    wtb(project, "rm", sweep[:8], code=1)  # the first sweep: its runs are the hits' sources
    assert data_digest(project) == digest
    out = wtb(project, "rm", "last", sweep[:8]).stdout  # both sweeps
    assert "removed 8 runs, 2 sweeps" in out
    assert runs(project) == []
    assert json.loads(wtb(project, "fsck", "--json").stdout)["clean"]
    assert lg_threads(project) == set()
    with sqlite3.connect(project / "data/wtb.db") as db:
        assert [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                for t in ("blobs", "commits", "events", "sweeps")] == [0, 0, 0, 0]


def test_rm_refuses_a_running_run(project):
    run = runs(project)[0]["run_id"]
    owner = this_process()  # this test's process: alive while `wtb rm` looks
    with sqlite3.connect(project / "data/wtb.db") as db:
        db.execute("UPDATE runs SET status = 'running', owner_host = ?, owner_pid = ?, "
                   "owner_started = ? WHERE id = ?", (*owner, run))
    err = wtb(project, "rm", run[:8], code=1).stderr
    assert f"run {run[:8]} is running" in err


CRASH = """
import os, sys
import wtb_conf.store.gc as gc
from wtb_conf.job.checkpointer import Checkpoints
where = sys.argv[1]
if where == "in_transaction":
    real = gc._delete
    def _delete(conn, plan):
        real(conn, plan)
        os._exit(9)  # killed with every row deleted, before the commit
    gc._delete = _delete
else:
    Checkpoints.delete_threads = lambda *a: os._exit(9)  # killed after the commit
from wtb_conf.cli import main
main(["rm", sys.argv[2]])
"""


@pytest.mark.parametrize("where", ["in_transaction", "after_commit"])
def test_a_crash_mid_rm_leaves_a_consistent_store(project, where):
    run = runs(project)[0]["run_id"]
    proc = subprocess.run([sys.executable, "-c", CRASH, where, run], cwd=project,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    fsck = wtb(project, "fsck", "--json")
    assert json.loads(fsck.stdout)["clean"], fsck.stdout
    if where == "in_transaction":  # nothing happened
        assert len(runs(project)) == 4
        assert {t for t in lg_threads(project) if t.startswith(run)}
    else:  # the records went; LangGraph's threads stayed, and gc finds them
        assert len(runs(project)) == 3
        assert {t for t in lg_threads(project) if t.startswith(run)}
        dry = wtb(project, "gc", "--dry-run").stdout
        assert "2 LangGraph threads" in dry and "dry run" in dry
        assert "2 LangGraph threads of runs no longer" in wtb(project, "gc").stdout
        assert not {t for t in lg_threads(project) if t.startswith(run)}
        assert json.loads(wtb(project, "fsck", "--json").stdout)["clean"]


@pytest.mark.slow
def test_rm_on_postgresql_store_and_checkpointer(pg_url, tmp_path, monkeypatch):
    import psycopg
    from conftest import copy_project
    project = copy_project(tmp_path / "project")
    monkeypatch.setenv("WTB_DB_URL", pg_url)  # storage=postgres: store and checkpoints there
    run_bench(project, "-m", "+experiment=demo", "storage=postgres")
    run = runs(project)[0]["run_id"]
    out = wtb(project, "rm", run[:8]).stdout
    assert "2 LangGraph threads" in out and len(runs(project)) == 3
    assert json.loads(wtb(project, "fsck", "--json").stdout)["clean"]
    libpq = "postgresql://" + pg_url.partition("://")[2]
    with psycopg.connect(libpq) as conn:
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            assert not conn.execute(f"SELECT 1 FROM {table} WHERE thread_id LIKE %s",  # noqa: S608
                                    (run + "/%",)).fetchall(), table
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608


def test_gc_dry_run_changes_nothing_and_gc_removes_orphans(project):
    run = runs(project)[0]["run_id"]
    with contextlib.closing(sqlite3.connect(project / "data/wtb.db")) as db, db:
        # an orphan blob, as a crash leaves
        db.execute("INSERT INTO blobs (id, size, data) VALUES (?, 3, ?)",
                   (hashlib.sha256(b"old").hexdigest(), b"old"))
    # and LangGraph threads of a run no longer in the store (a copy of the run's, renamed)
    with contextlib.closing(sqlite3.connect(project / "data/checkpoints.db")) as db, db:
        for table in ("checkpoints", "writes"):
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            select = ", ".join("replace(thread_id, ?, ?)" if c == "thread_id" else c
                               for c in cols)
            db.execute(f"INSERT INTO {table} SELECT {select} FROM {table} "  # noqa: S608
                       "WHERE thread_id LIKE ?", (run, "f" * 32, run + "/%"))
    digest = data_digest(project)
    dry = wtb(project, "gc", "--dry-run").stdout
    assert "would remove 1 blobs no commit reaches" in dry and "2 LangGraph threads" in dry
    assert data_digest(project) == digest
    out = wtb(project, "gc").stdout
    assert "removed 1 blobs no commit reaches" in out and "2 LangGraph threads" in out
    assert not {t for t in lg_threads(project) if t.startswith("f" * 32)}
    assert {t for t in lg_threads(project) if t.startswith(run)}  # a run's own stay
    assert json.loads(wtb(project, "fsck", "--json").stdout)["clean"]
