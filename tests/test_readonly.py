"""Read-only means read-only: `wtb runs/show/log/diff/restore/compare/report/fsck` never write
the store, never migrate it, never wait on a sweep's write lock, and work on a store in a
read-only directory; a store they cannot read, or newer than the code, is one clear error."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from wtb_conf.store import StoreError, open_store

READERS = [
    ["runs"], ["runs", "--json"], ["show", "last"], ["log", "last"], ["diff", "last", "last"],
    ["compare"], ["fsck"], ["restore", "last", "--to", "{out}"], ["report", "--out", "{out}.html"],
]


def wtb(cwd: Path, *args: str, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*wrap, sys.executable, "-m", "wtb_conf.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def digest(data: Path) -> dict[str, str]:
    """Every file's hash, but SQLite's -shm (an index of the -wal, no data) and an empty -wal:
    a read-only connection to a WAL database makes both and may not remove them."""
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()
            and not p.name.endswith("-shm") and not (p.name.endswith("-wal") and
                                                       not p.stat().st_size)}


@pytest.fixture
def project(demo, tmp_path) -> Path:
    """A private copy of the demo project, its store closed (no -wal, no -shm)."""
    dest = tmp_path / "project"
    shutil.copytree(demo / "data", dest / "data")
    return dest


def read_only_mount(path: Path) -> list[str]:
    """A command prefix that runs its command with `path` mounted read-only (a user and
    mount namespace of its own: root's permission bits would not stop root from writing)."""
    wrap = ["unshare", "-rm", "sh", "-c",
            'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"', str(path)]
    probe = subprocess.run([*wrap, "sh", "-c", f"! touch {path}/.probe 2>/dev/null"])
    if probe.returncode != 0:
        pytest.skip("cannot mount a directory read-only here (no user namespaces)")
    return wrap


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_reader_works_in_a_read_only_directory_and_writes_nothing(project, tmp_path, args):
    before = digest(project / "data")
    args = [a.format(out=tmp_path / "out") for a in args]
    proc = wtb(project, *args, wrap=read_only_mount(project / "data"))
    assert proc.returncode == 0, proc.stderr
    assert digest(project / "data") == before


@pytest.mark.parametrize("after_a_reader", [False, True])
def test_writer_in_a_read_only_directory_is_one_clear_error(project, after_a_reader):
    if after_a_reader:  # a read-only connection leaves an empty -wal and the -shm behind
        assert wtb(project, "runs").returncode == 0
        assert (project / "data/wtb.db-wal").exists()
    before = digest(project / "data")
    proc = wtb(project, "rerun", "last", wrap=read_only_mount(project / "data"))
    assert proc.returncode == 1
    assert "wtb: error: cannot write the store" in proc.stderr
    assert "work on a read-only store" in proc.stderr and "Traceback" not in proc.stderr
    assert digest(project / "data") == before


def test_readers_do_not_wait_for_a_writer(project, tmp_path):
    """A sweep holds the write lock while it commits; a reader must not queue behind it."""
    writer = sqlite3.connect(project / "data" / "wtb.db", isolation_level=None, timeout=60)
    writer.execute("BEGIN IMMEDIATE")
    try:
        for args in READERS:
            args = [a.format(out=tmp_path / f"out{len(args)}") for a in args]
            proc = wtb(project, *args)  # the busy timeout is 60 s: a wait would time out here
            assert proc.returncode == 0, (args, proc.stderr)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_readers_do_not_migrate_an_older_store(project):
    db = project / "data" / "wtb.db"
    with sqlite3.connect(db) as conn:
        newest = conn.execute("SELECT max(v) FROM wtb_migrations").fetchone()[0]
        conn.execute("DELETE FROM wtb_migrations WHERE v = ?", (newest,))
    conn.close()
    before = digest(project / "data")
    proc = wtb(project, "runs")
    assert proc.returncode == 1
    assert f"schema version {newest - 1}, older than this wtb_conf's ({newest})" in proc.stderr
    assert "the next sweep, or a command that writes (`wtb fsck --repair`)" in proc.stderr
    assert digest(project / "data") == before


@pytest.mark.parametrize("args", [["runs"], ["show", "last"], ["rerun", "last"]])
def test_a_store_newer_than_the_code_is_a_clear_error(project, args):
    with sqlite3.connect(project / "data" / "wtb.db") as conn:
        conn.execute("INSERT INTO wtb_migrations (v) VALUES (99)")
    conn.close()
    before = digest(project / "data")
    proc = wtb(project, *args)
    assert proc.returncode == 1
    assert "has schema version 99, newer than this wtb_conf knows" in proc.stderr
    assert "upgrade wtb_conf" in proc.stderr and "Traceback" not in proc.stderr
    assert digest(project / "data") == before


@pytest.mark.parametrize(("url", "readonly", "message"), [
    ("sqlite:///{tmp}/nope/deeper/wtb.db", False, "the directory {tmp}/nope does not exist"),
    ("sqlite:///{tmp}/nope/wtb.db", True, "no store at {tmp}/nope/wtb.db"),
    ("sqlite:///{tmp}", True, "{tmp} is a directory; name the store's database file in it"),
    ("sqlite:///{tmp}/file/wtb.db", False,
     "of the store sqlite:///{tmp}/file/wtb.db: {tmp}/file: a file is in the way"),
    ("notaurl://", False, "is not a database URL SQLAlchemy can open"),
])
def test_store_urls_that_cannot_work(tmp_path, url, readonly, message):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(StoreError) as e:
        open_store(url.format(tmp=tmp_path), tmp_path / "blobs", readonly=readonly)
    assert message.format(tmp=tmp_path) in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing made


def test_the_data_directory_of_a_new_store_is_made(tmp_path):
    with open_store(f"sqlite:///{tmp_path}/data/wtb.db", tmp_path / "data/blobs") as store:
        assert store.runs() == []
    assert (tmp_path / "data" / "wtb.db").is_file()
