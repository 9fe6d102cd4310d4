"""The store under faults found by probes (#27): a damaged database, a full disk, setuid bits,
trees that disagree with their blobs or cannot be laid out, `--to` a symlink."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_project, run_bench, sha, write
from sqlalchemy import event, text

from wtb_conf.cli import main
from wtb_conf.job.checkpointer import Checkpoints
from wtb_conf.store import ObjectCorrupted, StoreError, UnsafePath, engine, fsck, open_store
from wtb_conf.store import files as files_mod
from wtb_conf.store.engine import storage_fault
from wtb_conf.store.errors import StoreFull, StoreMalformed

PAGE = 16384  # the store's SQLite page size (engine.py)


@pytest.fixture
def store(tmp_path):
    with open_store(str(tmp_path / "wtb.db"), tmp_path / "blobs", inline_max=1024) as s:
        yield s


def forge(store, entries: list) -> str:
    """A commit whose tree (well hashed) has these entries, as a hostile writer could make."""
    tree = json.dumps({"format": 1, "entries": entries}).encode()
    with store.engine.begin() as c:
        c.execute(text("INSERT INTO blobs (id, size, data) VALUES (:i, :s, :d) "
                       "ON CONFLICT (id) DO NOTHING"),
                  {"i": sha(tree), "s": len(tree), "d": tree})
        c.execute(text("INSERT INTO commits (id, tree, parent, message, created_at) "
                       "VALUES (:c, :t, NULL, '', 'now')"), {"c": sha(b"c" + tree),
                                                              "t": sha(tree)})
    return sha(b"c" + tree)


# -- a damaged database: fsck says so, a sweep refuses it in one line ---------------------

def damage_middle(db: Path) -> None:
    """8 KB of (seeded) random bytes over the start of the middle page."""
    pages = db.stat().st_size // PAGE
    with open(db, "r+b") as f:
        f.seek(pages // 2 * PAGE)
        f.write(random.Random(27).randbytes(8192))


def truncate_half(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


@pytest.fixture
def damaged(demo, tmp_path) -> Path:
    """A copy of the demo project and its store, each database's WAL merged into it (a test
    that read the shared demo's store before this one may have left a WAL beside it)."""
    project = copy_project(tmp_path / "project")
    shutil.copytree(demo / "data", project / "data")
    for db in ("wtb.db", "checkpoints.db"):
        conn = sqlite3.connect(project / "data" / db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()  # the last connection of a WAL database removes its -wal and -shm
    assert not (project / "data" / "wtb.db-wal").exists()
    return project


@pytest.mark.parametrize("db", ["wtb.db", "checkpoints.db"])
def test_fsck_runs_sqlites_integrity_check_on_both_databases(damaged, capsys, monkeypatch, db):
    monkeypatch.chdir(damaged)
    assert main(["fsck"]) == 0
    capsys.readouterr()
    damage_middle(damaged / "data" / db)
    assert main(["fsck"]) == 1
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.startswith("  malformed_db: ")]
    assert f"{damaged / 'data' / db} fails SQLite's integrity check" in line
    assert "Traceback" not in out


@pytest.mark.parametrize("harm", [damage_middle, truncate_half], ids=["8 KB random", "truncated"])
def test_a_sweep_refuses_a_malformed_store_at_its_start_in_one_line(damaged, harm):
    harm(damaged / "data" / "wtb.db")
    before = (damaged / "data" / "wtb.db").read_bytes()
    proc = run_bench(damaged, "-m", "+experiment=demo", check=False)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert f"the store's database {damaged / 'data' / 'wtb.db'} is malformed" in out
    assert (damaged / "data" / "wtb.db").read_bytes() == before  # nothing written into it
    assert not (damaged / "multirun").exists()


def test_opening_a_malformed_store_for_writing_is_a_store_error(tmp_path, monkeypatch):
    db = tmp_path / "wtb.db"
    with open_store(str(db), tmp_path / "blobs") as s:  # a store of several pages
        s.commit_dir(write(tmp_path / "src", {f"f{i}": os.urandom(9000) for i in range(30)}))
    damage_middle(db)
    # (a process checks a file once: this one checked it when the store was made)
    monkeypatch.setattr(engine, "_verified", set())
    with pytest.raises(StoreMalformed, match=rf"^the store's database {db} is malformed \(SQLite"):
        open_store(str(db), tmp_path / "blobs")


# -- a full disk: "the disk is full", with the database or directory ---------------------

def cap_pages(store, pages: int) -> None:
    """SQLite's max_page_count on every connection: SQLITE_FULL, as a full disk gives it,
    without filling the real disk."""
    event.listen(store.engine, "connect",
                 lambda dbapi, _rec: dbapi.execute(f"PRAGMA max_page_count={pages}"))
    store.engine.dispose()


def test_a_full_database_says_the_disk_is_full_and_names_it(tmp_path):
    db = tmp_path / "wtb.db"
    with open_store(str(db), tmp_path / "blobs", inline_max=1 << 20) as store:
        sweep = store.create_sweep(["-m"])
        run = store.start_run(sweep, 0, [], "w", "{}", "d", str(tmp_path))
        with store.engine.connect() as c:
            used = c.exec_driver_sql("PRAGMA page_count").scalar_one()
        cap_pages(store, used + 2)
        src = write(tmp_path / "src", {"big": os.urandom(200_000)})
        with pytest.raises(StoreFull, match=rf"^cannot commit {src}: the store's database "
                                            rf"{db}: the disk is full \(SQLite: database or "
                                            r"disk is full\)"):
            store.commit_dir(src)
        # the run records too (records.py, lifecycle.py): one message, no SQL, no URL
        with pytest.raises(StoreFull) as e:
            store.finish_run(run, "failed", None, {}, "x" * 200_000)
        assert str(e.value).startswith(f"the store's database {db}: the disk is full")
        assert "sqlalche.me" not in str(e.value) and "UPDATE" not in str(e.value)
    with open_store(str(db), tmp_path / "blobs") as store:  # rolled back: still whole
        assert store.fsck() == []


def test_a_full_disk_under_the_blob_dir_names_the_dir(store, tmp_path, monkeypatch):
    def no_room(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_mod, "write_all", no_room)
    src = write(tmp_path / "src", {"big": os.urandom(5000)})
    with pytest.raises(StoreFull, match=rf"writing its blob into {tmp_path / 'blobs'}/objects "
                                        "failed: the disk is full"):
        store.commit_dir(src)


class _Sqlite(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.sqlite_errorcode = code


class _Pg(Exception):
    def __init__(self, state: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate = state


FAULTS = [
    (_Sqlite(13, "database or disk is full"), StoreFull, "DB: the disk is full (SQLite"),
    (_Sqlite(11, "database disk image is malformed"), StoreMalformed, "DB is malformed"),
    (_Sqlite(779, "database disk image is malformed"), StoreMalformed, "DB is malformed"),
    (_Sqlite(26, "file is not a database"), StoreMalformed, "DB is malformed"),
    (_Pg("53100", "could not extend file: No space left on device"), StoreFull,
     "DB: the disk is full on its PostgreSQL server"),
    (_Pg("XX001", "invalid page in block 3"), StoreMalformed, "DB is damaged"),
    (_Sqlite(5, "database is locked"), None, ""),
    (_Sqlite(1, "no such table: x"), None, ""),
    (_Pg("23505", "duplicate key"), None, ""),
]


@pytest.mark.parametrize("orig,kind,words", FAULTS, ids=[str(f[0]) for f in FAULTS])
def test_storage_faults_are_told_from_the_querys_own_errors(orig, kind, words):
    err = storage_fault(orig, "DB")
    assert (type(err) if err else None) is kind
    assert err is None or words in str(err)


# -- modes: permission bits only ---------------------------------------------------------

def test_setuid_setgid_and_sticky_bits_are_never_stored_nor_restored(store, tmp_path):
    src = write(tmp_path / "src", {"tool.sh": b"#!/bin/sh\n", "plain": b"p"})
    os.chmod(src / "tool.sh", 0o6755)
    os.chmod(src / "plain", 0o1640)
    commit = store.commit_dir(src)
    tree = store.tree(commit)
    assert (tree["tool.sh"].mode, tree["plain"].mode) == (0o755, 0o640)
    store.restore(commit, tmp_path / "dest")
    assert stat.S_IMODE(os.stat(tmp_path / "dest/tool.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "dest/plain").st_mode) == 0o640


def test_a_crafted_setuid_entry_is_restored_without_it(store, tmp_path):
    blob = store.tree(store.commit_dir(write(tmp_path / "src", {"t": b"#!"})))["t"].blob
    forged = forge(store, [["t", blob, 2, 0o6755], ["u", blob, 2, 0o4777]])
    store.restore(forged, tmp_path / "dest")
    assert stat.S_IMODE(os.stat(tmp_path / "dest/t").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "dest/u").st_mode) == 0o777


# -- trees that cannot be restored as they are -------------------------------------------

def test_an_entry_whose_size_disagrees_with_its_blob_is_refused(store, tmp_path):
    blob = store.tree(store.commit_dir(write(tmp_path / "src", {"a": b"abc"})))["a"].blob
    forged = forge(store, [["a", blob, 4000, 0o644]])
    with pytest.raises(ObjectCorrupted, match=rf"tree entry 'a' says 4000 bytes, its blob "
                                              rf"{blob} holds 3: the tree is corrupt"):
        store.restore(forged, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not list(tmp_path.glob(".dest.restoring-*"))
    [problem] = [p for p in fsck.check(store, None).problems if p.object == forged]
    assert problem.kind == "corrupt_tree" and "entry 'a' says 4000 bytes" in problem.message


def test_a_link_entry_whose_size_disagrees_is_refused(store, tmp_path):
    target = b"elsewhere"
    with store.engine.begin() as c:
        c.execute(text("INSERT INTO blobs (id, size, data) VALUES (:i, :s, :d)"),
                  {"i": sha(target), "s": len(target), "d": target})
    forged = forge(store, [["l", sha(target), 2, 0o120000]])
    with pytest.raises(ObjectCorrupted, match="tree entry 'l' says 2 bytes"):
        store.restore(forged, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_a_file_x_and_a_file_x_slash_y_is_an_unsafe_tree(store, tmp_path, capsys):
    blob = store.tree(store.commit_dir(write(tmp_path / "src", {"a": b"abc"})))["a"].blob
    forged = forge(store, [["x", blob, 3, 0o644], ["x/y", blob, 3, 0o644]])
    with pytest.raises(UnsafePath, match=rf"^commit {forged} has an unsafe tree: entry 'x' is a "
                                         "file, and the entry 'x/y' lies beneath it; refusing"):
        store.restore(forged, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    [problem] = [p for p in fsck.check(store, None).problems if p.object == forged]
    assert problem.kind == "unsafe_tree" and "'x/y' lies beneath it" in problem.message


def test_restore_to_a_symlink_to_a_directory_restores_where_it_points(tmp_path, capsys):
    db, blobs = tmp_path / "wtb.db", tmp_path / "blobs"
    with open_store(str(db), blobs) as store:
        sweep = store.create_sweep(["-m"])
        run = store.start_run(sweep, 0, [], "w", "{}", "d", str(tmp_path))
        commit = store.commit_dir(write(tmp_path / "src", {"a": b"abc", "d/b": b"b"}))
        store.finish_run(run, "completed", commit)
        store.finish_sweep(sweep)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert main(["--db", str(db), "--blobs", str(blobs), "restore", run[:8], "--to",
                 str(tmp_path / "link")]) == 0
    assert (tmp_path / "real/a").read_bytes() == b"abc"
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link/d/b").read_bytes() == b"b"
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]


def test_stored_trees_still_parse_and_hash_as_before(store, tmp_path):
    """trees.encode writes the bytes the store always wrote: the same files, the same ids."""
    src = write(tmp_path / "src", {"a": b"abc", "d/b": b"b"})
    commit = store.commit_dir(src, "m")
    entries = [["a", sha(b"abc"), 3, 0o644], ["d/b", sha(b"b"), 1, 0o644]]
    tree = json.dumps({"format": 1, "entries": entries}, separators=(",", ":")).encode()
    expected = hashlib.sha256(json.dumps([sha(tree), None, "m"],
                                         separators=(",", ":")).encode()).hexdigest()
    os.chmod(src / "a", 0o644)
    assert commit == expected


def test_a_malformed_checkpoints_file_is_reported_not_raised(tmp_path):
    cps = tmp_path / "checkpoints.db"
    cps.write_bytes(b"SQLite format 3\0" + os.urandom(4000))
    with open_store(str(tmp_path / "wtb.db"), tmp_path / "blobs") as store:
        report = fsck.check(store, Checkpoints(cps))
    assert [p.kind for p in report.problems] == ["malformed_db"]
    assert str(cps) in report.problems[0].message
    with pytest.raises(sqlite3.DatabaseError):  # (what the check reads is indeed damaged)
        sqlite3.connect(cps).execute("SELECT * FROM sqlite_master").fetchall()
    assert isinstance(StoreFull("x"), StoreError)


def test_a_sweep_on_a_disk_with_no_room_is_refused_in_one_line(tmp_path):
    """#27 item 11: with ~150 KB free, job 0 failed with SQLAlchemy's raw message and job 1
    got no run row; now the sweep is refused before anything is written. The project is on
    a 2 MiB tmpfs of a mount namespace of the test's own (unshare), as root."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a small file system")
    project = copy_project(tmp_path / "project")
    script = (f"mount -t tmpfs -o size=2m tmpfs {tmp_path / 'small'} && "
              f"cp -r {project}/. {tmp_path / 'small'} && cd {tmp_path / 'small'} && "
              f"{sys.executable} -m wtb_conf -m +experiment=demo; echo rc=$? && ls")
    (tmp_path / "small").mkdir()
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "rc=1" in proc.stdout, out
    said = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and "the disk is full" in said[0], out
    assert f"{tmp_path / 'small'}" in said[0]
    assert "data" not in proc.stdout.split("rc=1")[1].split(), "nothing written"
