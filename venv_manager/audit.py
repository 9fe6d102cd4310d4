"""The audit database (`env_audit.db`): every operation, and what is known of each env."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text

from venv_manager.spec import InvalidSpec

DEFAULT_PAGE = 100  # History's page size when the request leaves it 0
MAX_PAGE = 1000

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS operations (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        operation TEXT NOT NULL,
        env_id TEXT,
        labels TEXT NOT NULL,
        status TEXT NOT NULL,
        stdout TEXT NOT NULL,
        stderr TEXT NOT NULL,
        exit_code INTEGER,
        duration_s REAL NOT NULL
    )""",
    # (RunCode's streams: the row holds a head of each, these describe the whole of it)
    *(f"ALTER TABLE operations ADD COLUMN {name} {kind}" for name, kind in (
        ("stdout_sha256", "TEXT"), ("stderr_sha256", "TEXT"), ("stdout_bytes", "INTEGER"),
        ("stderr_bytes", "INTEGER"))),
    "CREATE INDEX IF NOT EXISTS operations_env ON operations (env_id, id)",
    """CREATE TABLE IF NOT EXISTS envs (
        env_id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        labels TEXT NOT NULL,
        python_version TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT NOT NULL,
        size_bytes INTEGER NOT NULL
    )""",
]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Audit:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}")

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")  # atomic still; no fsync per op
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

        with self.engine.begin() as conn:
            columns = {r[1] for r in conn.execute(text("PRAGMA table_info(operations)"))}
            for statement in SCHEMA:
                # an older database gains the columns it lacks; a newer one is left alone
                if statement.startswith("ALTER") and statement.split()[5] in columns:
                    continue
                conn.execute(text(statement))

    def record(self, operation: str, env_id: str | None, labels: dict, status: str,
               duration_s: float, stdout: str = "", stderr: str = "",
               exit_code: int | None = None, touch: bool = False,
               streams: tuple[Any, Any] | None = None) -> None:
        """Log an operation; with touch, also mark the env used now (same transaction).
        `streams`: RunCode's stdout and stderr (capture.Stream): their digests and sizes."""
        out_meta = (streams[0].sha256, streams[0].size) if streams else (None, None)
        err_meta = (streams[1].sha256, streams[1].size) if streams else (None, None)
        with self.engine.begin() as conn:
            if touch:
                conn.execute(text("UPDATE envs SET last_used_at = :at WHERE env_id = :id"),
                             {"at": now_iso(), "id": env_id})
            conn.execute(
                text("INSERT INTO operations (at, operation, env_id, labels, status, stdout, "
                     "stderr, exit_code, duration_s, stdout_sha256, stdout_bytes, "
                     "stderr_sha256, stderr_bytes) VALUES (:at, :op, :env, :labels, :status, "
                     ":out, :err, :code, :dur, :out_sha, :out_n, :err_sha, :err_n)"),
                {"at": now_iso(), "op": operation, "env": env_id,
                 "labels": json.dumps(labels, sort_keys=True), "status": status, "out": stdout,
                 "err": stderr, "code": exit_code, "dur": duration_s,
                 "out_sha": out_meta[0], "out_n": out_meta[1], "err_sha": err_meta[0],
                 "err_n": err_meta[1]},
            )

    def history(self, env_id: str | None = None, label: tuple[str, str] | None = None,
                status: str | None = None, limit: int = DEFAULT_PAGE,
                before_id: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page of operations, newest first, filtered, and the `before_id` of the next
        page (0 when this is the last). Every filter is in the query, so a page holds `limit`
        matching operations whenever that many are left."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidSpec(f"page_size {limit}: expected 1 to {MAX_PAGE} (0: {DEFAULT_PAGE})")
        if before_id is not None and before_id < 0:
            raise InvalidSpec(f"before_id {before_id}: expected the next_before_id of a page")
        where, params = ["1 = 1"], {"limit": limit + 1}
        if env_id:
            where.append("env_id = :env")
            params["env"] = env_id
        if status:
            where.append("status = :status")
            params["status"] = status
        if before_id:
            where.append("id < :before")
            params["before"] = before_id
        if label:
            where.append("EXISTS (SELECT 1 FROM json_each(operations.labels) "
                         "WHERE json_each.key = :lkey AND json_each.value = :lvalue)")
            params["lkey"], params["lvalue"] = label
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT * FROM operations WHERE {' AND '.join(where)} "
                                     "ORDER BY id DESC LIMIT :limit"), params).mappings().all()
        page = [dict(r, labels=json.loads(r["labels"])) for r in rows[:limit]]
        return page, page[-1]["id"] if len(rows) > limit else 0

    def upsert_env(self, env_id: str, spec: dict, labels: dict, python_version: str,
                   size_bytes: int) -> None:
        at = now_iso()
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO envs (env_id, spec, labels, python_version, created_at, "
                     "last_used_at, size_bytes) VALUES (:id, :spec, :labels, :py, :at, :at, "
                     ":size) ON CONFLICT (env_id) DO UPDATE SET last_used_at = :at"),
                {"id": env_id, "spec": json.dumps(spec, sort_keys=True),
                 "labels": json.dumps(labels, sort_keys=True), "py": python_version, "at": at,
                 "size": size_bytes},
            )

    def touch(self, env_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE envs SET last_used_at = :at WHERE env_id = :id"),
                         {"at": now_iso(), "id": env_id})

    def env_row(self, env_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM envs WHERE env_id = :id"),
                               {"id": env_id}).mappings().first()
        return dict(row) if row else None

    def forget_env(self, env_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM envs WHERE env_id = :id"), {"id": env_id})
