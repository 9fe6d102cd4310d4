"""Where a store's parts are: URL helpers for `storage.db_url`, `storage.checkpoints` and
`storage.blob_root`, and `StorageSpec`, the storage group parsed and resolved once. The
bottom floor: every other module that needs to know what a storage URL names asks here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

# The URL schemes that name PostgreSQL: libpq's two and SQLAlchemy's with psycopg (so one
# URL can serve storage.db_url and storage.checkpoints).
PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def is_postgres(where: str | os.PathLike) -> bool:
    """Whether `storage.checkpoints` names a PostgreSQL database (else a SQLite file)."""
    scheme, sep, _ = str(where).partition("://")
    return bool(sep) and scheme.lower() in PG_SCHEMES


def sqlalchemy_url(url: str) -> str:
    """A store URL (`storage.db_url`, `wtb --db`) as SQLAlchemy opens it: a libpq URL
    (postgresql://, postgres://) gets psycopg's driver name, since SQLAlchemy's default for
    it, psycopg2, is not installed. So one URL serves db_url and checkpoints."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme.lower() in PG_SCHEMES[:2] else url


def libpq_url(url: str) -> str:
    """The URL as libpq (psycopg.connect) reads it: without SQLAlchemy's `+psycopg`."""
    return "postgresql://" + url.partition("://")[2]


def redact(url: str | URL) -> str:
    """A database URL for a message: no password, neither in its user part nor as libpq's
    `?password=` (a run's messages are stored and printed)."""
    try:
        parsed = make_url(url)
    except Exception:  # not SQLAlchemy's form (libpq may still take it): keep host and path
        scheme, _, rest = str(url).partition("://")
        return f"{scheme}://{rest.rpartition('@')[2].partition('?')[0]}"
    if "@" in (parsed.host or "") + (parsed.password or ""):
        # an unencoded '@' in the password: SQLAlchemy split it in the wrong place
        return f"{parsed.drivername}://{str(url).rpartition('@')[2].partition('?')[0]}"
    return parsed.difference_update_query(["password"]).render_as_string(hide_password=True)


def _resolved(where: str, base: Path) -> str:
    """A path relative to `base` made absolute; a URL (s3://, postgresql://) as it is: it
    names the same place from every directory and node."""
    return where if "://" in where else str(where if os.path.isabs(where) else base / where)


@dataclass(frozen=True)
class StorageSpec:
    """The storage group (`conf/storage/NAME.yaml`) parsed and resolved once: what the store,
    the checkpointer, the planner, fsck and the CLI are handed. Paths are absolute, so a
    spec names the same store from any directory; URLs keep their passwords (`shown()` is
    the form for messages)."""

    db_url: str  # an SQLAlchemy URL: sqlite:///ABSOLUTE/PATH or postgresql+psycopg://...
    blob_root: str  # an absolute directory, or an object store URL (s3://BUCKET/PREFIX)
    checkpoints: str  # LangGraph's SQLite file (absolute) or a PostgreSQL URL
    inline_max: int = 65536  # blobs up to this many bytes live in the database

    @classmethod
    def resolve(cls, db_url: str, blob_root: str, checkpoints: str, inline_max: int,
                base: Path) -> StorageSpec:
        """The spec of values as a config or the command line gives them: relative paths
        against `base` (the launch dir), a libpq db_url with psycopg's driver name."""
        db_url = sqlalchemy_url(db_url)
        prefix = "sqlite:///"
        if db_url.startswith(prefix) and db_url[len(prefix):] not in ("", ":memory:"):
            db_url = prefix + _resolved(db_url[len(prefix):], base)
        return cls(db_url, _resolved(blob_root, base), _resolved(checkpoints, base),
                   inline_max)

    @property
    def sqlite_file(self) -> str | None:
        """The store's database file, when it is SQLite on this machine."""
        prefix = "sqlite:///"
        return self.db_url[len(prefix):] if self.db_url.startswith(prefix) else None

    @property
    def postgres_checkpoints(self) -> bool:
        return is_postgres(self.checkpoints)

    def local_dirs(self) -> list[str]:
        """The directories on this machine the store writes into (its database file's and the
        blob root, when they are not a server's)."""
        dirs = []
        if self.sqlite_file is not None:
            dirs.append(os.path.dirname(self.sqlite_file) or ".")
        if "://" not in self.blob_root:
            dirs.append(self.blob_root)
        return dirs

    def shown(self) -> dict[str, str]:
        """The spec for messages and logs: no password anywhere."""
        return {"db_url": redact(self.db_url), "blob_root": self.blob_root,
                "checkpoints": redact(libpq_url(self.checkpoints)) if self.postgres_checkpoints
                else self.checkpoints}
