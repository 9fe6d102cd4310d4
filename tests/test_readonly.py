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

import conftest
import pytest

from wtb_conf.store import StoreError, open_store

READERS = [
    ["runs"], ["runs", "--json"], ["show", "last"], ["log", "last"], ["diff", "last", "last"],
    ["compare"], ["fsck"], ["restore", "last", "--to", "{out}"], ["report", "--out", "{out}.html"],
    ["rm", "last", "--dry-run"],
]


def wtb(cwd: Path, *args: str, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    if not wrap:
        return conftest.wtb(cwd, *args, code=None, timeout=120)
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


@pytest.mark.slow
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


# -- PostgreSQL: read-only is the server's word ------------------------------------------
# A read-only store on PostgreSQL is opened with default_transaction_read_only=on: the server
# refuses every write, whatever the code does; readers never wait for writers (MVCC). The
# rows below are the ones above that mean something there (no directory, no -wal).


def _pg_store(url: str, tmp_path: Path) -> tuple[str, str]:
    """A store in the database `url` with one completed run; (run id, commit id)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text("alpha")
    with open_store(url, tmp_path / "blobs") as store:
        commit = store.commit_dir(src, "first")
        sweep = store.create_sweep(["test"])
        run = store.start_run(sweep, 0, [], "wf", "{}", "d", str(tmp_path))
        store.finish_run(run, "completed", commit, {"m": 1})
        store.finish_sweep(sweep)
    return run, commit


def pg_digest(url: str) -> dict[str, list]:
    """Every row of every table of the database, as text."""
    import psycopg
    from sqlalchemy.engine import make_url

    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY 1")]
        return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}


def test_postgresql_a_read_only_store_reads_and_the_server_refuses_its_writes(pg_url, tmp_path):
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from wtb_conf.store.schema import setup

    run, commit = _pg_store(pg_url, tmp_path)
    before = pg_digest(pg_url)
    with open_store(pg_url, tmp_path / "blobs", readonly=True) as store:
        assert store.run(run)["status"] == "completed" and store.tree(commit)
        for write in (lambda: store.create_sweep(["x"]), lambda: store.log_event("x", {}, run)):
            with pytest.raises(DBAPIError, match="read-only transaction"):
                write()
        setup(store.engine)  # a current store: nothing to do, no lock, no DDL (digest below)
        with store.engine.begin() as conn, pytest.raises(DBAPIError, match="read-only"):
            conn.execute(text("DELETE FROM runs"))
    assert pg_digest(pg_url) == before


@pytest.mark.parametrize("args", [["runs", "--json"], ["show", "last"], ["log", "last"],
                                  ["compare"], ["fsck"]], ids=lambda a: a[0])
def test_postgresql_readers_write_nothing(pg_url, tmp_path, args):
    _pg_store(pg_url, tmp_path)
    before = pg_digest(pg_url)
    proc = wtb(tmp_path, "--db", pg_url, "--blobs", str(tmp_path / "blobs"), *args)
    assert proc.returncode == 0, proc.stderr
    assert pg_digest(pg_url) == before


def test_postgresql_readers_do_not_wait_for_a_writer(pg_url, tmp_path):
    """A sweep's transaction holds row locks and the store's advisory locks (here: a run's row
    being updated, a set-up, a sweep's end): a reader takes none, and never queues."""
    from sqlalchemy import text

    from wtb_conf.store.schema import create_store_engine, lock

    run, _ = _pg_store(pg_url, tmp_path)
    writer = create_store_engine(pg_url)
    with writer.begin() as conn:
        for name in ("wtb_migrations", "sweep ends", "blobs"):
            lock(conn, name)
        conn.execute(text("UPDATE runs SET status = 'failed' WHERE id = :r"), {"r": run})
        conn.execute(text("LOCK TABLE runs IN EXCLUSIVE MODE"))  # all but plain reads wait
        with open_store(pg_url, tmp_path / "blobs", readonly=True) as store:
            assert store.run(run)["status"] == "completed"  # the committed row
        proc = wtb(tmp_path, "--db", pg_url, "--blobs", str(tmp_path / "blobs"), "runs")
        assert proc.returncode == 0, proc.stderr
        conn.rollback()
    writer.dispose()


def test_postgresql_readers_do_not_migrate_an_older_store_and_refuse_a_newer(pg_url, tmp_path):
    from sqlalchemy import text

    from wtb_conf.store.schema import MIGRATIONS, create_store_engine

    _pg_store(pg_url, tmp_path)
    newest = len(MIGRATIONS)
    engine = create_store_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM wtb_migrations WHERE v = :v"), {"v": newest})
    before = pg_digest(pg_url)
    with pytest.raises(StoreError, match=rf"schema version {newest - 1}, older than this "
                                         rf"wtb_conf's \({newest}\); a read-only command"):
        open_store(pg_url, tmp_path / "blobs", readonly=True)
    assert pg_digest(pg_url) == before
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO wtb_migrations (v) VALUES (:v), (99)"), {"v": newest})
    engine.dispose()
    for readonly in (True, False):
        with pytest.raises(StoreError, match="has schema version 99, newer than this wtb_conf "
                                             r"knows \(\d+\): upgrade wtb_conf"):
            open_store(pg_url, tmp_path / "blobs", readonly=readonly)


def test_postgresql_urls_that_cannot_work(pg_server, tmp_path):
    """The messages of the SQLite rows above, with the URL (its password hidden)."""
    import psycopg

    empty, other = pg_server.new_database(), pg_server.new_database()
    with psycopg.connect(pg_server.url(other, driver="postgresql"), autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (a INTEGER)")

    def url(db: str, port: int = pg_server.port) -> str:
        return f"postgresql+psycopg://{pg_server.user}:s3cret@127.0.0.1:{port}/{db}"

    def hidden(db: str, port: int = pg_server.port) -> str:
        return url(db, port).replace("s3cret", "***")

    cases = [
        (url("nosuchdb"), True, f"no store at {hidden('nosuchdb')}: the database does not "
                                "exist on that server"),
        (url("nosuchdb"), False, f"cannot open the store {hidden('nosuchdb')}: the database "
                                 "does not exist on that server; create it"),
        (url(empty), True, f"no store at {hidden(empty)}: the database holds no tables yet"),
        (url(other), True, f"{hidden(other)} is not a wtb_conf store"),
        (url("x", port=1), True, f"cannot read the store {hidden('x', 1)}: connection failed"),
        (url("x", port=1), False, f"cannot open the store {hidden('x', 1)}: connection failed"),
    ]
    for db_url, readonly, message in cases:
        with pytest.raises(StoreError) as e:
            open_store(db_url, tmp_path / "blobs", readonly=readonly)
        assert message in str(e.value) and "s3cret" not in str(e.value), (db_url, readonly)
    assert not (tmp_path / "blobs").exists()
