"""Content-addressed blobs, trees and commits: commit a directory, restore it, diff two commits.

A blob's id is the SHA-256 of its bytes. Blobs up to `inline_max` bytes live in the `blobs`
table (one SQLite page write instead of a file create, rename and fsync; see
docs/benchmarks.md); larger ones are files under `<blob_root>/objects/ab/cdef...`.
A tree is the JSON manifest of a directory (path -> blob, size, mode), stored as a blob, so
identical trees are stored once. A commit names a tree, a parent and a message; its id is the
digest of those three, so the same files committed the same way give the same id anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Connection, Engine, bindparam, text

from wtb_conf.store.errors import ObjectCorrupted, ObjectNotFound, UnsafePath
from wtb_conf.store.schema import read_conn

TREE_FORMAT = 1
_CHUNK = 500  # ids per IN (...) query, well below SQLite's bound-parameter limit


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Entry(NamedTuple):
    blob: str
    size: int
    mode: int


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


@dataclass
class CommitStats:
    """What the last `commit_dir` did; tests and the benchmark read it."""

    files: int = 0
    hashed: int = 0  # files read and hashed (the rest came from the stat cache)
    new_blobs: int = 0


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under root as (posix relative path, lstat), skipping symlinks."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(root, rel_dir)) as it:
            for de in it:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                if de.is_dir(follow_symlinks=False):
                    stack.append(rel)
                elif de.is_file(follow_symlinks=False):
                    yield rel, de.stat(follow_symlinks=False)


def _read(path: str, size: int) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its fstat taken after reading them (raw os.read: no buffering
    layer, which is a fifth of a first commit's time)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, max(size + 1, 65536)):
            chunks.append(chunk)
        return b"".join(chunks), os.fstat(fd)
    finally:
        os.close(fd)


def executemany(conn: Connection, table: str, rows: list[dict], conflict: str = "") -> None:
    """INSERT many rows through the DBAPI driver directly: SQLAlchemy's per-row parameter
    processing costs more than SQLite's own insert for the thousand rows of a big commit."""
    if not rows:
        return
    cols = list(rows[0])
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({{}}) {conflict}"
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
    if mark is None:  # a driver with named parameters: let SQLAlchemy bind them
        conn.execute(text(sql.format(", ".join(f":{c}" for c in cols))), rows)
        return
    conn.exec_driver_sql(
        sql.format(", ".join([mark] * len(cols))), [tuple(r[c] for c in cols) for r in rows]
    )


def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == (
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
        b.st_ino,
    )


def _write_durably(path: Path, data: bytes, mode: int = 0o444) -> None:
    """Write via a temp file in the same directory, fsync, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_target(dest: Path, rel: str) -> Path:
    """dest/rel, refusing absolute paths, '..' and anything that resolves outside dest."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise UnsafePath(f"tree entry {rel!r} is not a plain relative path; refusing to restore it")
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise UnsafePath(f"tree entry {rel!r} resolves outside {dest}; refusing to restore it")
    return target


class ObjectStore:
    """Blobs, trees and commits over one engine and one blob directory."""

    def __init__(self, engine: Engine, blob_root: str | os.PathLike, inline_max: int,
                 readonly: bool = False) -> None:
        self.engine = engine
        self.readonly = readonly
        self.blob_root = Path(blob_root).resolve()
        self.inline_max = inline_max
        self.last_commit = CommitStats()
        # Stat cache of each committed root, kept after the first load: a job commits its case
        # dir after every checkpoint, and this saves re-reading the table each time.
        self._stat_memo: dict[str, dict[str, tuple]] = {}

    # -- blobs -------------------------------------------------------------------------

    def _blob_path(self, blob_id: str) -> Path:
        return self.blob_root / "objects" / blob_id[:2] / blob_id[2:]

    def _existing_blobs(self, conn: Connection, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        query = text("SELECT id FROM blobs WHERE id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        for i in range(0, len(ids), _CHUNK):
            found.update(r[0] for r in conn.execute(query, {"ids": ids[i : i + _CHUNK]}))
        return found

    def _stage_blobs(self, blobs: dict[str, bytes]) -> list[dict]:
        """Rows for the blobs not stored yet. Big ones are written (and fsynced) to their
        files here, before any transaction can reference them."""
        with read_conn(self.engine) as conn:
            existing = self._existing_blobs(conn, blobs)
        rows = []
        for blob_id, data in blobs.items():
            if blob_id in existing:
                continue
            inline = len(data) <= self.inline_max
            if not inline and not self._blob_path(blob_id).exists():
                _write_durably(self._blob_path(blob_id), data)
            rows.append({"id": blob_id, "size": len(data), "data": data if inline else None})
        return rows

    def read_blob(self, blob_id: str, path_hint: str = "") -> bytes:
        """The blob's bytes, re-hashed: raises ObjectCorrupted if they no longer match."""
        what = f"blob {blob_id}" + (f" (file {path_hint})" if path_hint else "")
        with read_conn(self.engine) as conn:
            row = conn.execute(
                text("SELECT size, data FROM blobs WHERE id = :id"), {"id": blob_id}
            ).first()
        if row is None:
            raise ObjectNotFound(f"{what} is not in the store")
        data = row.data
        if data is None:
            try:
                data = self._blob_path(blob_id).read_bytes()
            except FileNotFoundError:
                raise ObjectCorrupted(
                    f"{what} is corrupted: {self._blob_path(blob_id)} is missing"
                ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != blob_id:
            raise ObjectCorrupted(f"{what} is corrupted: its bytes hash to {actual}")
        return bytes(data)

    # -- trees and commits -------------------------------------------------------------

    def tree(self, commit_id: str) -> dict[str, Entry]:
        """The manifest of a commit: relative path -> Entry."""
        with read_conn(self.engine) as conn:
            row = conn.execute(
                text("SELECT tree FROM commits WHERE id = :id"), {"id": commit_id}
            ).first()
        if row is None:
            raise ObjectNotFound(f"commit {commit_id} is not in the store")
        doc = json.loads(self.read_blob(row.tree, f"tree of commit {commit_id}"))
        return {p: Entry(b, s, m) for p, b, s, m in doc["entries"]}

    def commit_dir(
        self, path: str | os.PathLike, message: str = "", parent: str | None = None,
        files: Iterable[str] | None = None,
    ) -> str:
        """Commit every regular file under `path` (recursively), or only `files` (relative
        paths of regular files under it), and return the commit id.

        Files whose (size, mtime, ctime, inode) match the stat cache are not read again.
        """
        root = str(Path(path).resolve())
        if not os.path.isdir(root):
            raise FileNotFoundError(f"cannot commit {root}: not a directory")
        stats = CommitStats()
        cache = self._stat_memo.get(root)
        if cache is None:
            with read_conn(self.engine) as conn:
                rows = conn.execute(
                    text(
                        "SELECT path, size, mtime_ns, ctime_ns, ino, blob FROM stat_cache "
                        "WHERE root = :root"
                    ),
                    {"root": root},
                )
                cache = {r[0]: tuple(r[1:]) for r in rows}  # plain tuples: this is the hot loop
        entries: dict[str, Entry] = {}
        blobs: dict[str, bytes] = {}
        fresh: list[tuple[str, os.stat_result, str]] = []  # hashed files to cache
        if files is not None:
            files = set(files)
            found = [(rel, os.lstat(os.path.join(root, rel))) for rel in sorted(files)]
        for rel, st in found if files is not None else _walk(root):
            c = cache.get(rel)
            if c is not None and c[:4] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
                entries[rel] = Entry(c[4], c[0], st.st_mode & 0o7777)
                continue
            data, after = _read(os.path.join(root, rel), st.st_size)
            stats.hashed += 1
            blob_id = hashlib.sha256(data).hexdigest()
            blobs[blob_id] = data
            entries[rel] = Entry(blob_id, len(data), st.st_mode & 0o7777)
            if _same_stat(st, after):  # not written to while we read it
                fresh.append((rel, after, blob_id))
        stats.files = len(entries)
        tree_doc = {
            "format": TREE_FORMAT,
            "entries": [[p, e.blob, e.size, e.mode] for p, e in sorted(entries.items())],
        }
        tree_bytes = json.dumps(tree_doc, separators=(",", ":")).encode()
        tree_id = hashlib.sha256(tree_bytes).hexdigest()
        blobs[tree_id] = tree_bytes
        commit_id = hashlib.sha256(
            json.dumps([tree_id, parent, message], separators=(",", ":")).encode()
        ).hexdigest()
        racy_after = self._fs_now()
        rows = self._stage_blobs(blobs)
        stats.new_blobs = len(rows)
        stale = any(p not in entries for p in cache if files is None or p in files)
        if not rows and not fresh and not stale:  # nothing new: no write transaction
            with read_conn(self.engine) as conn:
                if self._has_commit(conn, commit_id):
                    self._stat_memo[root] = cache
                    self.last_commit = stats
                    return commit_id
        with self.engine.begin() as conn:
            if parent is not None and not self._has_commit(conn, parent):
                raise ObjectNotFound(f"parent commit {parent} is not in the store")
            executemany(conn, "blobs", rows, "ON CONFLICT (id) DO NOTHING")
            conn.execute(
                text(
                    "INSERT INTO commits (id, tree, parent, message, created_at) "
                    "VALUES (:id, :tree, :parent, :message, :at) ON CONFLICT (id) DO NOTHING"
                ),
                {"id": commit_id, "tree": tree_id, "parent": parent, "message": message,
                 "at": now_iso()},
            )
            cache = self._update_stat_cache(conn, root, cache, entries, fresh, racy_after,
                                            files)
        self._stat_memo[root] = cache
        self.last_commit = stats
        return commit_id

    def _fs_now(self) -> int:
        """The filesystem clock, read like git reads its index mtime (see _update_stat_cache)."""
        marker = self.blob_root / ".clock"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return marker.stat().st_mtime_ns

    def _update_stat_cache(self, conn, root, cache, entries, fresh, racy_after,
                           files=None) -> dict:
        # A file whose mtime is not older than the filesystem clock after the scan could be
        # rewritten within the same timestamp tick without its stat changing ("racy git"):
        # leave it out of the cache so the next commit reads it again.
        rows = [
            {"root": root, "path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "mode": stat.S_IMODE(st.st_mode),
             "blob": blob_id}
            for rel, st, blob_id in fresh
            if st.st_mtime_ns < racy_after and st.st_ctime_ns < racy_after
        ]
        # (a commit of some files of a root says nothing about its other files)
        gone = [p for p in cache if p not in entries and (files is None or p in files)] + [
            rel for rel, _, _ in fresh if rel in cache
        ]
        if gone:
            conn.execute(
                text("DELETE FROM stat_cache WHERE root = :root AND path = :path"),
                [{"root": root, "path": p} for p in gone],
            )
        # Jobs running at once commit the same input files (of their shared launch dir).
        executemany(conn, "stat_cache", rows,
                    "ON CONFLICT (root, path) DO UPDATE SET size = excluded.size, "
                    "mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, "
                    "ino = excluded.ino, mode = excluded.mode, blob = excluded.blob")
        cache = {p: c for p, c in cache.items() if p not in gone
                 and (p in entries or files is not None)}
        for r in rows:
            cache[r["path"]] = (r["size"], r["mtime_ns"], r["ctime_ns"], r["ino"], r["blob"])
        return cache

    @staticmethod
    def _has_commit(conn: Connection, commit_id: str) -> bool:
        q = text("SELECT 1 FROM commits WHERE id = :id")
        return conn.execute(q, {"id": commit_id}).first() is not None

    def restore(self, commit_id: str, dest: str | os.PathLike) -> list[str]:
        """Write the commit's files into `dest`, which must be missing or empty.

        Everything is read, verified and written into a sibling temp dir first, then renamed
        into place: a corrupted blob or an unsafe path leaves `dest` untouched.
        """
        dest = Path(dest).absolute()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise FileExistsError(f"{dest} exists and is not empty; restore into a new directory")
        tree = self.tree(commit_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.restoring-"))
        try:
            for rel, entry in sorted(tree.items()):
                target = safe_target(staging, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.read_blob(entry.blob, rel))
                os.chmod(target, entry.mode)
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return sorted(tree)

    def diff(self, a: str, b: str) -> Diff:
        """Paths added, removed and changed (content or mode) from commit a to commit b."""
        ta, tb = self.tree(a), self.tree(b)
        return Diff(
            added=sorted(set(tb) - set(ta)),
            removed=sorted(set(ta) - set(tb)),
            changed=sorted(p for p in set(ta) & set(tb) if ta[p] != tb[p]),
        )

    def fsck(self) -> list[str]:
        """Problems found: commits whose tree or files point at missing or corrupted blobs."""
        problems = []
        with read_conn(self.engine) as conn:
            commit_ids = [r[0] for r in conn.execute(text("SELECT id FROM commits"))]
        for commit_id in commit_ids:
            try:
                for rel, entry in self.tree(commit_id).items():
                    self.read_blob(entry.blob, rel)
            except (ObjectNotFound, ObjectCorrupted) as e:
                problems.append(f"commit {commit_id}: {e}")
        return problems
