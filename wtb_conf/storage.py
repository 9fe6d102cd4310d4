"""Where a store's parts are: URL helpers for `storage.db_url`, `storage.checkpoints` and
`storage.blob_root`, and `StorageSpec`, the storage group parsed and resolved once. The
bottom floor: every other module that needs to know what a storage URL names asks here.
"""

from __future__ import annotations

import os

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
