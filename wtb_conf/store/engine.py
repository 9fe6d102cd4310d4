"""The store's database engine on SQLite or PostgreSQL, and the locks its writers take.

SQLite has one write lock per database: every write transaction takes it up front (BEGIN
IMMEDIATE), so writers are serialized and a check-then-insert inside one transaction is safe.
PostgreSQL lets writers run side by side (READ COMMITTED, row locks): where the store's code
relied on SQLite's serialization, it takes a lock of its own through `lock()` (an advisory
lock on PostgreSQL, nothing on SQLite, which holds the one write lock already).
"""

from __future__ import annotations

import os
import re
import time
import weakref
from pathlib import Path
from urllib.parse import quote, unquote

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url

from wtb_conf.storage import redact  # noqa: F401 (the store's modules take it from here)
from wtb_conf.store.errors import StoreError, StoreFull, StoreMalformed

BUSY_TIMEOUT_S = 60  # how long a connection waits for a lock another process holds
DIALECTS = ("sqlite", "postgresql")
EXAMPLES = "sqlite:///data/wtb.db, or postgresql+psycopg://USER:PASSWORD@HOST:5432/DBNAME"
# The first key of every advisory lock the store takes ("wtbc"), so that its locks cannot be
# mistaken for another application's on the same PostgreSQL database.
_LOCK_CLASS = 0x77746263
_FIXED = {"wtb_migrations": 1, "blobs": 2, "sweep ends": 3}  # lock(): names with fixed keys
_KINDS = {"job": _LOCK_CLASS + 1, "stat_cache": _LOCK_CLASS + 2}  # lock(): hashed kinds
# SQLite's primary result codes (the low byte of an extended one) that are the storage's
# fault, not the query's
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26
_verified: set[str] = set()  # SQLite files this process (or its parent before a fork) checked


def malformed(where: str, why: str) -> str:
    return (f"the store's database {where} is malformed ({why}): restore it from a backup, or "
            "recover what can be read with sqlite3's `.recover` into a new file")


def storage_fault(orig: BaseException, where: str) -> StoreError | None:
    """The StoreError for a driver error that is the storage's fault, not the query's: a full
    disk (SQLITE_FULL, PostgreSQL's 53100) or a damaged database (SQLITE_CORRUPT,
    SQLITE_NOTADB, PostgreSQL's XX001/XX002). None for any other error."""
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    code = getattr(orig, "sqlite_errorcode", None)
    state = getattr(orig, "sqlstate", None)
    if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
        return StoreFull(f"the store's database {where}: the disk is full (SQLite: {first}); "
                         "free space on its disk, or move the store (storage.db_url)")
    if isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreMalformed(malformed(where, f"SQLite: {first}"))
    if state == "53100":
        return StoreFull(f"the store's database {where}: the disk is full on its PostgreSQL "
                         f"server ({first})")
    if state in ("XX001", "XX002"):
        return StoreMalformed(f"the store's database {where} is damaged on its PostgreSQL "
                              f"server ({first}); its administrator restores it from a backup")
    return None


def _translate(ctx: exc.ExceptionContext) -> None:
    """Every query's error that is the storage's fault becomes one StoreError naming the
    database, in place of SQLAlchemy's (SQL, parameters and a link to its docs)."""
    where = shown(ctx.engine) if ctx.engine is not None else "(unknown)"
    if (err := storage_fault(ctx.original_exception, where)) is not None:
        raise err from ctx.original_exception


def verify_sqlite(engine: Engine) -> None:
    """SQLite's quick_check of the store's file, once per file per process (a local
    worker forked after the sweep's start has its verdict): a damaged store is refused where
    it is opened, in one StoreMalformed, not found by each job's queries. It reads every
    page (about a second per GB), not the cross-checks of indexes that `wtb fsck`'s full
    integrity_check adds."""
    where = shown(engine)
    if engine.dialect.name != "sqlite" or where in _verified or not where:
        return
    with read_conn(engine) as conn:
        rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
    if rows != ["ok"]:
        raise StoreMalformed(malformed(where, "SQLite's quick_check: " + check_errors(rows)))
    _verified.add(where)


def check_errors(rows: list) -> str:
    """SQLite's integrity_check or quick_check answer on one line: its first error, and how
    many more (an answer may span lines; its "*** in database main ***" says nothing)."""
    lines = [line.strip() for r in rows for line in str(r).splitlines()
             if line.strip() and not line.startswith("*** in database")]
    lines = lines or ["(no detail)"]
    more = f" (and {len(lines) - 1} more errors)" if len(lines) > 1 else ""
    return lines[0] + more


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


def shown(url: str | URL | Engine) -> str:
    """A store's URL as messages show it: the password hidden, a SQLite file as its path."""
    url = url.url if isinstance(url, Engine) else make_url(url)
    if url.get_backend_name() == "sqlite":
        return unquote((url.database or "").removeprefix("file:"))
    return redact(url)


def create_store_engine(db_url: str, readonly: bool = False) -> Engine:
    """An engine for `db_url`, SQLite or PostgreSQL; for SQLite, the file's directory is made
    if its parent exists (`data/` of `sqlite:///data/wtb.db`; a mistyped path further up is an
    error, not a tree of new directories). `readonly`: nothing is written or locked (SQLite
    opens the file read-only; PostgreSQL refuses writes in every transaction), and a SQLite
    store in a read-only directory can be read."""
    url = make_url(db_url)
    url.get_dialect()  # NoSuchModuleError for a URL SQLAlchemy knows nothing of
    backend = url.get_backend_name()
    if backend == "postgresql":
        return _postgres_engine(url, readonly)
    if backend != "sqlite":
        raise StoreError(f"{shown(url)}: the store runs on SQLite or PostgreSQL, not "
                         f"{backend}; e.g. {EXAMPLES}")
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
        event.listen(engine, "handle_error", _translate)
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
    event.listen(engine, "handle_error", _translate)
    return engine


def _postgres_engine(url: URL, readonly: bool) -> Engine:
    if url.drivername == "postgresql":  # SQLAlchemy's default is psycopg2; we ship psycopg 3
        url = url.set(drivername="postgresql+psycopg")
    options = [url.query["options"]] if "options" in url.query else []
    if readonly:
        # The server itself refuses every write (INSERT, UPDATE, DDL: "cannot execute ... in
        # a read-only transaction"), whatever the code does; reads never wait on writers
        # (MVCC), so a read-only command needs no lock of any kind.
        options.append("-c default_transaction_read_only=on")
    engine = create_engine(
        url.difference_update_query(["options"]),
        connect_args={"options": " ".join(options)} if options else {},
        # The locking below is written for READ COMMITTED: an UPDATE ... WHERE status =
        # 'running' that waited for another transaction's row lock re-checks its WHERE on
        # the row as that one left it. Set explicitly: a server's default may differ.
        isolation_level="READ COMMITTED",
        # A connection the server or a NAT dropped (a restart, an idle timeout during a long
        # node) is found at checkout, not by the job's next write: one round trip per checkout
        pool_pre_ping=True,
    )
    _fork_safe(engine)
    event.listen(engine, "handle_error", _translate)
    return engine


def _fork_safe(engine: Engine) -> None:
    """A pooled connection belongs to the process that opened it: local workers are forked
    from the command, and a socket used by two processes mixes their messages. A connection
    checked out in another process is dropped (not closed: that would close the parent's
    session) and a new one made (SQLAlchemy's recipe for pools and multiprocessing)."""

    @event.listens_for(engine, "connect")
    def connect(_dbapi_conn, record) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def checkout(_dbapi_conn, record, proxy) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise exc.DisconnectionError("connection made in another process")

    # A child that closes the engine it inherited would otherwise close the parent's sessions
    # (psycopg's close() sends Terminate whoever calls it): the child forgets them unclosed.
    ref = weakref.ref(engine)

    def forget() -> None:
        if (inherited := ref()) is not None:
            inherited.dispose(close=False)

    os.register_at_fork(after_in_child=forget)


def missing_database(e: exc.DBAPIError) -> bool:
    """Whether `e` says the PostgreSQL database does not exist. At connect time psycopg gives
    no SQLSTATE (3D000 comes from the server inside the message only)."""
    return getattr(e.orig, "sqlstate", None) == "3D000" or bool(
        re.search(r'FATAL:\s+database ".*" does not exist', str(e.orig)))


def lock(conn: Connection, name: str, shared: bool = False) -> None:
    """Hold the lock `name` until this write transaction ends: every other transaction that
    locks `name` waits (`shared`: only those that lock it exclusively). For what has no row
    to lock yet (a job key before its first run) or spans many rows (a sweep's end, repair).

    SQLite: nothing to do, the transaction holds the database's one write lock already
    (BEGIN IMMEDIATE). PostgreSQL: a transaction-level advisory lock. The names in _FIXED have
    keys of their own; `kind:value` names are hashed within a class per kind, so a collision
    can only be with a name of the same kind, of which a transaction takes one: it makes one
    wait for the other, never both hold a lock, and never a deadlock (a hash equal to a lock
    held shared, then asked for exclusively, would be one)."""
    if conn.dialect.name != "postgresql":
        return
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    if name in _FIXED:
        conn.execute(text(f"SELECT {fn}(:c, :k)"), {"c": _LOCK_CLASS, "k": _FIXED[name]})
        return
    kind, _, value = name.partition(":")
    conn.execute(text(f"SELECT {fn}(:c, hashtext(:n))"), {"c": _KINDS[kind], "n": value})


def read_conn(engine: Engine) -> Connection:
    """A connection for queries: autocommit, so reading never takes the write lock."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def executemany(conn: Connection, table: str, rows: list[dict], conflict: str = "") -> None:
    """INSERT many rows through the DBAPI driver directly: SQLAlchemy's per-row parameter
    processing costs more than SQLite's own insert for the thousand rows of a big commit."""
    if not rows:
        return
    cols = list(rows[0])
    if conn.dialect.name == "postgresql":
        # In key order (the callers' first two columns are their conflict key): PostgreSQL
        # locks each key as it inserts it, and two commits inserting the same new blobs in
        # different orders would deadlock. (SQLite: one writer at a time.)
        rows = sorted(rows, key=lambda r: [r[c] for c in cols[:2]])
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({{}}) {conflict}"
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
    if mark is None:  # a driver with named parameters: let SQLAlchemy bind them
        conn.execute(text(sql.format(", ".join(f":{c}" for c in cols))), rows)
        return
    conn.exec_driver_sql(
        sql.format(", ".join([mark] * len(cols))), [tuple(r[c] for c in cols) for r in rows]
    )
