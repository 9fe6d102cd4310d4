"""LangGraph's checkpointer, chosen by `storage.checkpoints`: a SQLite file (LangGraph's
SqliteSaver, as before) or a PostgreSQL URL (langgraph-checkpoint-postgres' PostgresSaver),
so that a job on any node reaches its checkpoints and none needs a local file.

Each job opens its own (`open_checkpointer`); a fork, rollback or resume copies a checkpoint
within that one checkpointer (wtb_conf.job.fork), so it must be the one the parent run used.
`wtb fsck`, `rm` and `gc` are handed a `Checkpoints(where)` by the CLI: the store's floor
cannot import this one, so it names the shape it needs (store/checkpoint_store.py) and this
class has it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from wtb_conf.storage import is_postgres, libpq_url, redact
from wtb_conf.store.errors import StoreError

# The session-level advisory lock that serializes LangGraph's setup() in a database; a
# constant of our own, so it cannot collide with the store's locks.
SETUP_LOCK = int.from_bytes(hashlib.sha256(b"wtb_conf checkpointer setup").digest()[:8],
                            "big", signed=True)
SETUP_WAIT_S = 300.0  # another process's setup taking longer than this is an error
_CHUNK = 5000  # keys per query in missing()

Key = tuple[str, str, str]  # (thread_id, checkpoint_ns, checkpoint_id)


class CheckpointsError(StoreError):
    """The checkpointer cannot be opened or read; the message names where it is."""


def describe(where: str | os.PathLike) -> str:
    """Where the checkpoints are, for messages: the file's absolute path, or the URL without
    its password."""
    if not is_postgres(where):
        return str(Path(where).absolute())
    return redact(libpq_url(str(where)))


def check_reachable(where: str | os.PathLike) -> None:
    """At the sweep's start: a PostgreSQL checkpointer no job could reach refuses the sweep
    (each job would wait for it, then fail). A SQLite file is made by the first job."""
    if is_postgres(where):
        try:
            _connect(str(where)).close()
        except CheckpointsError as e:
            raise CheckpointsError(f"storage.checkpoints: {e}") from None


@contextlib.contextmanager
def open_checkpointer(where: str | os.PathLike) -> Iterator[Any]:
    """LangGraph's checkpointer at `where` (a SQLite file, or a PostgreSQL URL whose tables
    are made on first use), closed on exit."""
    if not is_postgres(where):
        from langgraph.checkpoint.sqlite import SqliteSaver

        Path(where).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(where, check_same_thread=False, timeout=60)
        with contextlib.closing(conn):
            yield SqliteSaver(conn)
        return
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    try:
        # autocommit: LangGraph's migrations include CREATE INDEX CONCURRENTLY, which cannot
        # run in a transaction; prepare_threshold=0 as LangGraph's own from_conn_string (no
        # server-side prepared statements; the set-up's session advisory lock still needs a
        # session of its own, so not PgBouncer's transaction pooling)
        conn = _connect(str(where), autocommit=True, prepare_threshold=0, row_factory=dict_row)
        with contextlib.ExitStack() as undo:
            undo.callback(conn.close)
            saver = PostgresSaver(conn)
            _setup(saver, conn, str(where))
            undo.pop_all()
    except CheckpointsError as e:  # the job's error: say which key to look at
        raise CheckpointsError(f"storage.checkpoints: {e}") from None
    with conn:
        yield saver


def _connect(url: str, **kwargs: Any) -> Any:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    conninfo = libpq_url(url)
    try:
        if "connect_timeout" not in conninfo_to_dict(conninfo):
            kwargs["connect_timeout"] = 30  # libpq's default is to wait forever
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.ProgrammingError:  # libpq could not parse it: its words may quote a password
        raise CheckpointsError(f"{describe(url)} is not a URL libpq can read; write it like "
                               "postgresql://USER@HOST:5432/DB (percent-encode special "
                               "characters)") from None
    except psycopg.Error as e:
        raise CheckpointsError(f"cannot connect to the checkpointer {describe(url)}: "
                               f"{_one_line(e)}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _setup(saver: Any, conn: Any, url: str) -> None:
    """saver.setup(), once per database however many jobs start at once.

    LangGraph's setup() is not safe to run concurrently: two processes read the same
    migration version and both apply the next one (a UniqueViolation on
    checkpoint_migrations, or on pg_type for a table both create). So it runs under an
    advisory lock, taken by polling pg_try_advisory_lock: a process *blocked* in
    pg_advisory_lock is a running statement, which the holder's CREATE INDEX CONCURRENTLY
    waits for, while it waits for the holder's lock (PostgreSQL reports a deadlock; seen
    with 8 jobs starting at once). Once the tables are current, no lock is taken."""
    import psycopg

    latest = len(saver.MIGRATIONS) - 1
    try:
        if _version(conn) >= latest:
            return
        deadline = time.monotonic() + SETUP_WAIT_S
        while not conn.execute("SELECT pg_try_advisory_lock(%s) AS got",
                               (SETUP_LOCK,)).fetchone()["got"]:
            if time.monotonic() > deadline:
                raise CheckpointsError(
                    f"the checkpointer {describe(url)}: another process has been creating "
                    f"LangGraph's tables for {SETUP_WAIT_S:.0f} s (it holds advisory lock "
                    f"{SETUP_LOCK}); look for a stuck session in pg_stat_activity")
            time.sleep(0.05)
        try:
            saver.setup()  # re-reads the version: a process that waited finds it done
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))
    except psycopg.Error as e:
        raise CheckpointsError(f"cannot set up LangGraph's tables in the checkpointer "
                               f"{describe(url)}: {_one_line(e)}") from None


def _version(conn: Any) -> int:
    """The newest LangGraph migration applied in the database (-1: none)."""
    from psycopg.errors import UndefinedTable

    try:
        row = conn.execute("SELECT max(v) AS v FROM checkpoint_migrations").fetchone()
    except UndefinedTable:  # autocommit: the failed statement leaves nothing to roll back
        return -1
    return -1 if row["v"] is None else row["v"]


def missing(where: str | os.PathLike, keys: Iterable[Key]) -> set[Key]:
    """The keys (thread_id, checkpoint_ns, checkpoint_id) that have no checkpoint at `where`.
    Reads only: the SQLite file is opened read-only, PostgreSQL in a read-only transaction.
    Raises CheckpointsError when the checkpointer cannot be read at all."""
    wanted = set(keys)
    if not wanted:
        return set()
    found = _pg_found(str(where), wanted) if is_postgres(where) else _sqlite_found(where)
    return wanted - found


def _sqlite_found(where: str | os.PathLike) -> set[Key]:
    from wtb_conf.store.schema import readonly_uri

    path = Path(where).absolute()
    if not path.is_file():
        raise CheckpointsError(f"{path} does not exist (--checkpoints names LangGraph's file "
                               "or database)")
    try:  # read-only: fsck never creates or changes LangGraph's file
        con = sqlite3.connect(readonly_uri(path), uri=True, timeout=60)
        with contextlib.closing(con):
            return set(con.execute("SELECT thread_id, checkpoint_ns, checkpoint_id FROM "
                                   "checkpoints"))
    except sqlite3.Error as e:
        raise CheckpointsError(f"{path} is not a LangGraph checkpoints file ({e})") from None


def integrity(where: str | os.PathLike, max_errors: int = 20) -> list[str]:
    """SQLite's integrity_check of the checkpoints file, read-only: its errors, [] when it is
    sound or not there (`missing()` reports a missing file)."""
    from wtb_conf.store.schema import readonly_uri

    path = Path(where).absolute()
    if not path.is_file():
        return []
    try:
        con = sqlite3.connect(readonly_uri(path), uri=True, timeout=60)
        with contextlib.closing(con):
            rows = [str(r[0]) for r in con.execute(f"PRAGMA integrity_check({int(max_errors)})")]
    except sqlite3.Error as e:  # not a database at all, or too damaged to check
        return [f"{e}"]
    return [] if rows == ["ok"] else rows


def _pg_found(url: str, wanted: set[Key]) -> set[Key]:
    import psycopg

    ordered = sorted(wanted)
    found: set[Key] = set()
    with _connect(url) as conn:
        # BEGIN READ ONLY, REPEATABLE READ: nothing can be written, and every chunk's query
        # reads the same snapshot (READ COMMITTED, the default, takes one per statement)
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            with conn.transaction():
                for i in range(0, len(ordered), _CHUNK):
                    part = ordered[i:i + _CHUNK]
                    rows = conn.execute(
                        "SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id FROM checkpoints c"
                        " JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(t, n, i)"
                        " ON c.thread_id = k.t AND c.checkpoint_ns = k.n"
                        " AND c.checkpoint_id = k.i",
                        [list(col) for col in zip(*part, strict=True)])
                    found.update(tuple(r) for r in rows)
        except psycopg.errors.UndefinedTable:
            raise CheckpointsError(f"{describe(url)} holds no LangGraph checkpoints (no "
                                   "checkpoints table)") from None
        except psycopg.Error as e:
            raise CheckpointsError(f"cannot read the checkpointer {describe(url)}: "
                                   f"{_one_line(e)}") from None
    return found


class Checkpoints:
    """LangGraph's checkpointer at `where`, as `wtb fsck`, `rm` and `gc` use it: what the store
    asks of it (CheckpointStore, in store/checkpoint_store.py), and nothing more."""

    def __init__(self, where: str | os.PathLike) -> None:
        self.where = where

    def __repr__(self) -> str:
        return f"Checkpoints({self.describe()!r})"

    def describe(self) -> str:
        return describe(self.where)

    def missing(self, keys: Iterable[Key]) -> set[Key]:
        return missing(self.where, keys)

    def integrity_problems(self) -> list[str] | None:
        """SQLite's integrity_check errors ([] sound, or no file); None on PostgreSQL, which
        has no such check in its core (wtb_conf.store.integrity says so in a note)."""
        return None if is_postgres(self.where) else integrity(self.where)

    def thread_ids(self) -> list[str]:
        """The thread ids it holds, read only (a SQLite file is opened read-only: `wtb gc
        --dry-run` changes nothing; no file, or no table yet: none)."""
        from wtb_conf.store.schema import readonly_uri

        query = "SELECT DISTINCT thread_id FROM checkpoints"
        if is_postgres(self.where):
            with open_checkpointer(self.where) as saver:
                return sorted(r["thread_id"] for r in saver.conn.execute(query).fetchall())
        if not os.path.isfile(self.where):
            return []
        con = sqlite3.connect(readonly_uri(Path(self.where).absolute()), uri=True, timeout=60)
        try:
            return sorted(r[0] for r in con.execute(query))
        except sqlite3.OperationalError:  # no table yet: a file no job has written
            return []
        finally:
            con.close()

    def delete_threads(self, threads: list[str]) -> list[str]:
        """Delete the threads with LangGraph's own API; those it had (all of `threads`, or
        none when there is no file: none is made)."""
        if not is_postgres(self.where) and not os.path.isfile(self.where):
            return []
        with open_checkpointer(self.where) as saver:
            for thread in threads:
                saver.delete_thread(thread)
        return threads
