"""`wtb fsck`'s check of the databases themselves, before anything in them is read: SQLite's
`PRAGMA integrity_check` of the store's file and of LangGraph's checkpoints file.

PostgreSQL has no such check in its core: a damaged page shows as an error when it is read
(data checksums, `initdb -k`, catch a torn or flipped page then), and the `amcheck` extension
(`pg_amcheck`) that verifies tables and indexes needs its extension created and a superuser's
grant. fsck reads with the privileges of the store's role, so on PostgreSQL it checks neither
and says so in a note: that check is the server administrator's (pg_amcheck).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wtb_conf.store.engine import check_errors, read_conn, shown
from wtb_conf.store.errors import StoreError

if TYPE_CHECKING:
    from wtb_conf.store import Store
    from wtb_conf.store.checkpoint_store import CheckpointStore
    from wtb_conf.store.fsck import Report

MAX_ERRORS = 20  # integrity_check stops after this many; the first is shown
PG_NOTE = ("{what} is on PostgreSQL, which has no integrity check in its core: fsck did not "
           "check its pages (its administrator can, with pg_amcheck and data checksums)")


def summary(rows: list[str], where: str) -> str:
    return (f"{where} fails SQLite's integrity check: {check_errors(rows)}; restore it from a "
            "backup, or recover what can be read with sqlite3's `.recover` into a new file")


def check_store_db(store: Store, report: Report) -> bool:
    """The store's own database; False when it is damaged (nothing in it can be trusted)."""
    where = shown(store.engine)
    if store.engine.dialect.name != "sqlite":
        report.notes.append(PG_NOTE.format(what=f"the store {where}"))
        return True
    try:
        with read_conn(store.engine) as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql(
                f"PRAGMA integrity_check({MAX_ERRORS})")]
    except StoreError as e:  # engine.py's StoreMalformed: the check itself could not read it
        rows = [str(e.__cause__ or e)]
    if rows == ["ok"]:
        return True
    report.add("malformed_db", where, summary(rows, where))
    return False


def check_checkpoints_db(checkpoints: CheckpointStore | None, report: Report) -> None:
    """LangGraph's checkpoints file (a missing one is _check_links' problem)."""
    if checkpoints is None:
        return
    where = checkpoints.describe()
    rows = checkpoints.integrity_problems()
    if rows is None:
        report.notes.append(PG_NOTE.format(what=f"the checkpointer {where}"))
        return
    if rows:
        report.add("malformed_db", where, summary(rows, where))
