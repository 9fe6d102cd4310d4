"""The store's schema: an append-only list of migrations and the engine set-up.

Never edit a migration that has shipped; append a new one. `setup()` applies the ones a
database has not seen yet, in one write transaction, and records them in `wtb_migrations`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import quote, unquote

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from wtb_conf.store.errors import StoreError

MIGRATIONS: list[str] = [
    # 1: content-addressed objects. A blob with data NULL lives as a file under objects/.
    """
    CREATE TABLE IF NOT EXISTS blobs (
        id TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        data BLOB
    );
    CREATE TABLE IF NOT EXISTS commits (
        id TEXT PRIMARY KEY,
        tree TEXT NOT NULL REFERENCES blobs(id),
        parent TEXT REFERENCES commits(id),
        message TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS stat_cache (
        root TEXT NOT NULL,
        path TEXT NOT NULL,
        size BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        ctime_ns BIGINT NOT NULL,
        ino BIGINT NOT NULL,
        mode INTEGER NOT NULL,
        blob TEXT NOT NULL REFERENCES blobs(id),
        PRIMARY KEY (root, path)
    );
    """,
    # 2: run records and the audit trail.
    """
    CREATE TABLE IF NOT EXISTS sweeps (
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        sweep_dir TEXT,
        argv TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        sweep_id TEXT NOT NULL REFERENCES sweeps(id),
        job_num INTEGER NOT NULL,
        status TEXT NOT NULL,
        overrides TEXT NOT NULL,
        workflow TEXT,
        config_yaml TEXT NOT NULL,
        config_digest TEXT NOT NULL,
        job_dir TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        error TEXT,
        traceback TEXT,
        metrics TEXT,
        commit_id TEXT REFERENCES commits(id)
    );
    CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep_id, job_num);
    CREATE TABLE IF NOT EXISTS threads (
        thread_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(id),
        case_name TEXT NOT NULL,
        status TEXT NOT NULL,
        final_state TEXT,
        commit_id TEXT REFERENCES commits(id)
    );
    CREATE INDEX IF NOT EXISTS threads_run ON threads (run_id);
    CREATE TABLE IF NOT EXISTS checkpoint_links (
        thread_id TEXT NOT NULL,
        checkpoint_ns TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,
        run_id TEXT NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        source TEXT NOT NULL,
        nodes TEXT NOT NULL,
        commit_id TEXT NOT NULL REFERENCES commits(id),
        created_at TEXT NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
    );
    CREATE INDEX IF NOT EXISTS links_run ON checkpoint_links (run_id, step);
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        sweep_id TEXT,
        run_id TEXT,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
    """,
    # 3: the interpreter a run ran in: its path, its venv_manager env (null: the driver's
    # own interpreter) and the exact versions installed in it.
    """
    ALTER TABLE runs ADD COLUMN python TEXT;
    ALTER TABLE runs ADD COLUMN env_id TEXT;
    ALTER TABLE runs ADD COLUMN env_lock TEXT;
    """,
    # 4: job identity (the job cache): digests of config, env lock and code, their combined
    # key, and for a cache hit the run whose results it reuses.
    """
    ALTER TABLE runs ADD COLUMN job_key TEXT;
    ALTER TABLE runs ADD COLUMN env_digest TEXT;
    ALTER TABLE runs ADD COLUMN code_digest TEXT;
    ALTER TABLE runs ADD COLUMN cached_from TEXT REFERENCES runs(id);
    CREATE INDEX IF NOT EXISTS runs_job_key ON runs (job_key, status);
    """,
    # 5: time travel. A run started from another run's checkpoint (fork, rollback, resume)
    # names its parent; each of its case threads names the checkpoint it was copied from and
    # the nodes it inherited. A run keeps where it was launched and a commit of the input
    # files its cases name, so that it can be replayed. A link's prefix key says which
    # configs produced its checkpoint, so that another job with the same prefix can fork from
    # it (shared prefixes).
    """
    ALTER TABLE runs ADD COLUMN parent_run TEXT REFERENCES runs(id);
    ALTER TABLE runs ADD COLUMN launch_dir TEXT;
    ALTER TABLE runs ADD COLUMN inputs_commit TEXT REFERENCES commits(id);
    ALTER TABLE threads ADD COLUMN parent_thread TEXT;
    ALTER TABLE threads ADD COLUMN parent_checkpoint TEXT;
    ALTER TABLE threads ADD COLUMN inherited TEXT;
    ALTER TABLE checkpoint_links ADD COLUMN path TEXT;
    ALTER TABLE checkpoint_links ADD COLUMN base_key TEXT;
    ALTER TABLE checkpoint_links ADD COLUMN prefix_key TEXT;
    CREATE INDEX IF NOT EXISTS links_base_key ON checkpoint_links (base_key, step);
    """,
    # 6: judging runs. A case that failed keeps its own error, traceback and the node it
    # failed in (the other cases still run). An evaluation is one scoring of a run's cases by
    # its evaluators; a run can be scored again later (`wtb evaluate`) without running, so a
    # run has a history of evaluations and the newest counts. `eval_key` is the digest of
    # what scored (evaluators, expected values, their code): equal keys, equal scores.
    """
    ALTER TABLE threads ADD COLUMN error TEXT;
    ALTER TABLE threads ADD COLUMN traceback TEXT;
    ALTER TABLE threads ADD COLUMN failed_node TEXT;
    CREATE TABLE IF NOT EXISTS evaluations (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(id),
        created_at TEXT NOT NULL,
        source TEXT NOT NULL,
        eval_key TEXT NOT NULL,
        compare TEXT NOT NULL,
        cases TEXT NOT NULL,
        summary TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS evaluations_run ON evaluations (run_id, created_at);
    """,
    # 7: who owns what is running. A run or sweep is `running` only while the process that
    # started it lives; its owner (host and boot, pid, the process's start time) lets whoever
    # looks next tell a live one from one whose process died without a word (kill -9, OOM).
    # A sweep that ended with an error keeps it.
    """
    ALTER TABLE runs ADD COLUMN owner_host TEXT;
    ALTER TABLE runs ADD COLUMN owner_pid INTEGER;
    ALTER TABLE runs ADD COLUMN owner_started BIGINT;
    ALTER TABLE sweeps ADD COLUMN owner_host TEXT;
    ALTER TABLE sweeps ADD COLUMN owner_pid INTEGER;
    ALTER TABLE sweeps ADD COLUMN owner_started BIGINT;
    ALTER TABLE sweeps ADD COLUMN error TEXT;
    CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
    """,
    # 8: every status change has its event (`wtb fsck` checks it). Before 7, a sweep's end
    # failed its interrupted runs with an UPDATE alone: give those runs the event they lack.
    """
    INSERT INTO events (at, sweep_id, run_id, kind, data)
    SELECT coalesce(r.finished_at, r.started_at), NULL, r.id, 'run_failed',
           '{"backfilled": "migration 8", "commit": null}'
    FROM runs r WHERE r.status = 'failed' AND NOT EXISTS (
        SELECT 1 FROM events e WHERE e.run_id = r.id AND e.kind IN ('run_failed', 'run_lost'));
    """,
]


BUSY_TIMEOUT_S = 60  # how long a connection waits for a lock another process holds


def _journal_mode_wal(cur) -> None:
    """PRAGMA journal_mode=WAL, retried while the database is locked. Turning a new database
    file to WAL takes an exclusive lock, and when processes open a new store at the same moment
    SQLite answers "database is locked" at once, not after the busy timeout: each holds a read
    lock and wants the exclusive one, so waiting could deadlock (~1 in 1000 opens of 8 at
    once failed so). Whichever gets the lock converts the file; the others then find WAL."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as e:  # the driver's OperationalError
            if "database is locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # The driver's own transaction handling is switched off (isolation_level=None) so that
    # the "begin" hook below decides how a transaction starts.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # First: several job processes share one database, and journal_mode below already needs a
    # lock. The last connection to close copies the whole WAL into the database holding an
    # exclusive lock (seconds for a big WAL); a process opening the store meanwhile must wait
    # for it, not fail with "database is locked" after the driver's default 5 s.
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    cur.execute("PRAGMA page_size=16384")  # only takes effect on a new file; fewer pages per blob
    _journal_mode_wal(cur)  # readers never block the one writer
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL stays atomic; fsync per checkpoint, not commit
    # Copying the WAL back into the database costs ~100 ms per 10 MB here; checkpointing every
    # 64 MB instead of SQLite's 4 MB keeps that out of most commits (Store.close() checkpoints).
    cur.execute("PRAGMA wal_autocheckpoint=4096")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_readonly(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None
    dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")


def _sqlite_begin(conn) -> None:
    # IMMEDIATE takes the write lock up front: a deferred transaction that later needs to
    # write fails with SQLITE_BUSY at once instead of waiting out the busy timeout.
    if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _readonly_params(path: Path) -> dict[str, str]:
    """SQLite URI parameters that read `path` without writing anything. A WAL database needs
    its -shm file to read, made by the first reader; in a directory this process cannot write
    (a read-only mount, another user's store) there is none, and mode=ro fails "unable to open
    database file". Without a -wal file every committed change is in the database file (the
    last writer to close merged it), so it can be read as immutable: no locks, no -shm."""
    if not os.access(path.parent, os.W_OK) and not path.with_name(path.name + "-wal").exists():
        return {"mode": "ro", "immutable": "1"}
    return {"mode": "ro"}


def readonly_uri(path: Path) -> str:
    """The URI for sqlite3.connect(..., uri=True) that opens `path` read-only."""
    params = "&".join(f"{k}={v}" for k, v in _readonly_params(path).items())
    return f"file:{quote(str(path))}?{params}"  # quoted: a path with '#' or '?' in it


def cannot_write(db_url: str, why: object) -> str:
    return (f"cannot write the store {db_url}: {why}. Commands that only read (wtb runs, show, "
            "log, diff, restore, compare, report, fsck) work on a read-only store; a sweep and "
            "the other commands need to write to its directory")


def create_store_engine(db_url: str, readonly: bool = False) -> Engine:
    """An engine for `db_url`; for SQLite, the file's directory is made if its parent exists
    (`data/` of `sqlite:///data/wtb.db`; a mistyped path further up is an error, not a tree of
    new directories). `readonly`: SQLite opens the file read-only, nothing takes the write
    lock, and a store in a read-only directory can be read."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url)
    path = Path(url.database) if url.database and url.database != ":memory:" else None
    if readonly and path is not None:
        if path.is_dir():
            raise StoreError(f"{path} is a directory; name the store's database file in it, "
                             "e.g. --db data/wtb.db")
        if not path.is_file():
            raise StoreError(f"no store at {path}: run a sweep (`python -m wtb_conf -m ...`) "
                             "first, or name the store with --db")
        engine = create_engine(url.set(database=f"file:{quote(str(path))}",
                                       query={**_readonly_params(path), "uri": "true"}))
        event.listen(engine, "connect", _sqlite_readonly)
        return engine
    if path is not None and path.exists() and not (os.access(path, os.W_OK)
                                                   and os.access(path.parent, os.W_OK)):
        # SQLite would open it read-only without a word, and fail at the first write
        raise StoreError(cannot_write(db_url, f"{path} or its directory is read-only"))
    if path is not None:
        try:
            path.parent.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise StoreError(f"{db_url}: the directory {path.parent.parent} does not exist: "
                             "make it, or give a path in an existing directory") from None
        except OSError as e:  # a file in the way, no permission, a read-only file system
            why = "a file is in the way" if isinstance(e, FileExistsError) else e.strerror
            raise StoreError(f"cannot make the directory of the store {db_url}: "
                             f"{path.parent}: {why}") from None
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def check_version(engine: Engine) -> None:
    """For a store opened read-only: its schema must be the one this code knows."""
    where = unquote(engine.url.database.removeprefix("file:"))
    with read_conn(engine) as conn:
        try:
            done = {row[0] for row in conn.execute(text("SELECT v FROM wtb_migrations"))}
        except Exception as e:
            raise RuntimeError(f"{where} is not a wtb_conf store ({e.__class__.__name__}: "
                               f"{str(e).splitlines()[0]})") from None
    version = max(done, default=0)
    if version > len(MIGRATIONS):
        raise RuntimeError(f"{where} has schema version {version}, newer than this wtb_conf "
                           f"knows ({len(MIGRATIONS)}): upgrade wtb_conf")
    if version < len(MIGRATIONS):
        raise RuntimeError(f"{where} has schema version {version}, older than this wtb_conf's "
                           f"({len(MIGRATIONS)}); a read-only command does not migrate it: "
                           "the next sweep, or a command that writes (`wtb fsck --repair`), "
                           "upgrades it")


def setup(engine: Engine) -> None:
    """Create the schema or bring it up to date. Safe to call from many processes at once."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS wtb_migrations (v INTEGER PRIMARY KEY)"))
        done = {row[0] for row in conn.execute(text("SELECT v FROM wtb_migrations"))}
        if done and max(done) > len(MIGRATIONS):
            raise RuntimeError(
                f"{engine.url.render_as_string(hide_password=True)} has schema version "
                f"{max(done)}, newer than this wtb_conf knows ({len(MIGRATIONS)}): upgrade wtb_conf"
            )
        for version, script in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            for statement in filter(str.strip, script.split(";")):
                conn.execute(text(statement))
            conn.execute(text("INSERT INTO wtb_migrations (v) VALUES (:v)"), {"v": version})


def read_conn(engine: Engine) -> Connection:
    """A connection for queries: autocommit, so reading never takes the write lock."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
