"""The store: content-addressed files and the run records that point at them.

    from wtb_conf.store import open_store
    with open_store("sqlite:///data/wtb.db", "data/blobs") as store:
        commit = store.commit_dir("out/", message="first")
        store.restore(commit, "restored/")

One SQLAlchemy database holds blobs up to `inline_max` bytes, trees, commits, runs,
checkpoint links and events; larger blobs are files under `<blob_root>/objects/`.
"""

from __future__ import annotations

import os

from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from wtb_conf.storage import StorageSpec
from wtb_conf.store.errors import (
    ObjectCorrupted,
    ObjectNotFound,
    StoreError,
    UnsafePath,
)
from wtb_conf.store.evaluations import EvaluationRecords
from wtb_conf.store.lifecycle import Lifecycle
from wtb_conf.store.objects import CommitStats, Diff, Entry, ObjectStore
from wtb_conf.store.record_types import (
    DONE,
    Evaluation,
    EvaluationSource,
    Event,
    NewRun,
    Run,
    RunCheckpoint,
    RunDetail,
    RunStatus,
    Sweep,
    SweepStatus,
    Thread,
    ThreadStatus,
)
from wtb_conf.store.records import RunRecords
from wtb_conf.store.schema import (
    EXAMPLES,
    cannot_write,
    check_version,
    create_store_engine,
    missing_database,
    read_conn,
    redact,
    setup,
)

# Measured in benchmarks/store_bench.py: below this size a row in SQLite beats a file.
DEFAULT_INLINE_MAX = 64 * 1024

__all__ = [
    "DONE",
    "CommitStats",
    "Diff",
    "Entry",
    "Evaluation",
    "EvaluationSource",
    "Event",
    "NewRun",
    "ObjectCorrupted",
    "ObjectNotFound",
    "Run",
    "RunCheckpoint",
    "RunDetail",
    "RunStatus",
    "Store",
    "StoreError",
    "Sweep",
    "SweepStatus",
    "Thread",
    "ThreadStatus",
    "UnsafePath",
    "open_store",
]


class Store(ObjectStore, RunRecords, Lifecycle, EvaluationRecords):
    """Objects, run records and evaluations over one database; close() or use as a context
    manager."""

    def fsck(self) -> list[str]:
        """The problems `wtb fsck` finds, as messages, without LangGraph's checkpoints file
        (wtb_conf.store.fsck: the full report, and the repair)."""
        from wtb_conf.store import fsck

        return [p.message for p in fsck.check(self, None).problems]

    def close(self) -> None:
        if self.engine.dialect.name == "sqlite" and not self.readonly:
            with read_conn(self.engine) as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(
    db_url: str, blob_root: str | os.PathLike, inline_max: int = DEFAULT_INLINE_MAX,
    readonly: bool = False,
) -> Store:
    """Open (creating or migrating as needed) the store at `db_url` with blobs under `blob_root`.

    `db_url` is an SQLAlchemy URL (`sqlite:///data/wtb.db`, `postgresql+psycopg://user@host/db`)
    or a plain path to a SQLite file. A PostgreSQL database must exist; its tables are made.
    `readonly`: open an existing store for queries only: no migration, no write lock.
    """
    if "://" not in db_url:
        db_url = f"sqlite:///{os.path.abspath(db_url)}"
    try:
        engine = create_store_engine(db_url, readonly)
    except (ArgumentError, NoSuchModuleError) as e:
        raise StoreError(f"{db_url!r} is not a database URL SQLAlchemy can open ({e}); "
                         f"e.g. {EXAMPLES}") from None
    try:
        check_version(engine) if readonly else setup(engine)
    except RuntimeError as e:
        engine.dispose()
        raise StoreError(str(e)) from None
    except StoreError:  # a full disk, a damaged file: engine.py's one line
        engine.dispose()
        raise
    except DBAPIError as e:  # a read-only file or directory, a disk that is full, no server
        engine.dispose()
        where = redact(db_url)
        if engine.dialect.name == "postgresql":
            raise StoreError(_postgres_error(where, e, readonly)) from None
        if not isinstance(e, OperationalError):
            raise
        if readonly:
            raise StoreError(f"cannot read the store {where}: {e.orig}") from None
        raise StoreError(cannot_write(where, e.orig)) from None
    return Store(engine, blob_root, inline_max, readonly)


def store_at(spec: StorageSpec, readonly: bool = False) -> Store:
    """The store a storage spec (wtb_conf.storage) names: how the bench opens it."""
    return open_store(spec.db_url, spec.blob_root, spec.inline_max, readonly)


def _postgres_error(where: str, e: DBAPIError, readonly: bool) -> str:
    """The message for a PostgreSQL store that cannot be opened (by the error's SQLSTATE)."""
    why = str(e.orig).strip().splitlines()[0] if str(e.orig).strip() else type(e.orig).__name__
    state = getattr(e.orig, "sqlstate", None)
    if missing_database(e):
        return (f"cannot open the store {where}: the database does not exist on that server; "
                "create it (createdb NAME, or CREATE DATABASE) or name an existing one")
    if state in ("42501", "25006") and not readonly:  # no privilege; a read-only server
        return (f"cannot write the store {where}: {why}. Commands that only read (wtb runs, "
                "show, log, diff, restore, compare, report, fsck) need only SELECT; a sweep "
                "and the other commands need to create and write its tables")
    return f"cannot {'read' if readonly else 'open'} the store {where}: {why}"
