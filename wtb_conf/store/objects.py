"""Content-addressed blobs, trees and commits: commit a directory, restore it, diff two commits.

A blob's id is the SHA-256 of its bytes. Blobs up to `inline_max` bytes live in the `blobs`
table (one SQLite page write instead of a file create, rename and fsync; see
docs/benchmarks.md); larger ones are files under `<blob_root>/objects/ab/cdef...`, in a directory
or an object store (blobdirs.py).
A tree is the JSON manifest of a directory (path -> blob, size, mode), stored as a blob, so
identical trees are stored once; a symlink is an entry whose blob is its target and whose mode
is git's 0o120000. A commit names a tree, a parent and a message; its id is the digest of those
three, so the same files committed the same way give the same id anywhere. Big files are
streamed in chunks both ways (files.py), never held in memory whole; dir_scan.py reads the
directory a commit is made of.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, text

from wtb_conf.store import files as _files
from wtb_conf.store.blobdirs import BlobDir, LocalBlobDir, open_blob_dir
from wtb_conf.store.dir_scan import Scan, scan_dir
from wtb_conf.store.engine import executemany
from wtb_conf.store.errors import ObjectCorrupted, ObjectNotFound, StoreError, StoreFull
from wtb_conf.store.files import TempBlob, no_room, safe_target  # noqa: F401 (tests)
from wtb_conf.store.schema import lock, read_conn
from wtb_conf.store.trees import LINK_MODE, PERM_BITS, TREE_FORMAT, Entry, TreeError  # noqa: F401 (TREE_FORMAT: re-exported)
from wtb_conf.store.trees import encode as encode_tree
from wtb_conf.store.trees import parse as parse_tree

_CHUNK = 500  # ids per IN (...) query, well below SQLite's bound-parameter limit

# Fault injection, for tests/reliability/test_commit_faults.py only: it sets this to kill the
# process (os._exit) at one named step of commit_dir or restore, then checks what a crash at
# that step leaves on disk. None in normal use, where a step costs one global lookup.
_fault: Callable[[str], None] | None = None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


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


class ObjectStore:
    """Blobs, trees and commits over one engine and one blob directory (or object store)."""

    def __init__(self, engine: Engine, blob_root: str | os.PathLike, inline_max: int,
                 readonly: bool = False) -> None:
        self.engine = engine
        self.readonly = readonly
        self.blobs: BlobDir = open_blob_dir(blob_root)
        # (a Path for a directory, as it always was; the URL for an object store)
        self.blob_root = self.blobs.base if isinstance(self.blobs, LocalBlobDir) else \
            self.blobs.root
        if not readonly:
            try:  # a bucket that is not there fails the store's opening, not a job's commit
                self.blobs.check()
            except StoreError:
                engine.dispose()
                raise
        self.inline_max = inline_max
        self.last_commit = CommitStats()
        # Stat cache of each committed root, kept after the first load: a job commits its case
        # dir after every checkpoint, and this saves re-reading the table each time.
        self._stat_memo: dict[str, dict[str, tuple]] = {}

    # -- blobs -------------------------------------------------------------------------

    def _blob_path(self, blob_id: str) -> Path | str:
        return self.blobs.path(blob_id)

    def _existing_blobs(self, conn: Connection, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        query = text("SELECT id FROM blobs WHERE id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        for i in range(0, len(ids), _CHUNK):
            found.update(r[0] for r in conn.execute(query, {"ids": ids[i : i + _CHUNK]}))
        return found

    def _stage_blobs(self, small: dict[str, bytes], big: dict[str, int],
                     dirs: set[Path | None]) -> list[dict]:
        """Rows for the blobs not stored yet. `big` blobs (id -> size) are in their files
        already; a `small` one above inline_max (a big tree) is written to its file here."""
        with read_conn(self.engine) as conn:
            existing = self._existing_blobs(conn, [*small, *big])
        rows = []
        for blob_id, data in small.items():
            inline = len(data) <= self.inline_max
            if blob_id in existing:  # its file may be gone (fsck says so): bring it back
                if not inline and not self.blobs.exists(blob_id):
                    dirs.add(self.blobs.write(blob_id, data))
                continue
            if not inline and not self.blobs.exists(blob_id):
                dirs.add(self.blobs.write(blob_id, data))
            rows.append({"id": blob_id, "size": len(data), "data": data if inline else None})
        rows += [{"id": b, "size": size, "data": None} for b, size in big.items()
                 if b not in existing and b not in small]
        return rows

    def iter_blob(self, blob_id: str, path_hint: str = "") -> Iterator[bytes]:
        """The blob's bytes in chunks of at most files.CHUNK_SIZE, re-hashed on the way: after
        the last chunk, raises ObjectCorrupted if they do not hash to blob_id. What reads a big
        blob uses this (read_blob would hold all of it in memory)."""
        what = f"blob {blob_id}" + (f" (file {path_hint})" if path_hint else "")
        with read_conn(self.engine) as conn:
            row = conn.execute(
                text("SELECT size, data FROM blobs WHERE id = :id"), {"id": blob_id}
            ).first()
        if row is None:
            raise ObjectNotFound(f"{what} is not in the store")
        if isinstance(row.data, bytes | bytearray | memoryview):
            chunks: Iterable[bytes] = [bytes(row.data)]
        elif row.data is not None:  # a row edited by hand (SQLite keeps any type in a column)
            raise ObjectCorrupted(f"{what} is corrupted: its row holds "
                                  f"{type(row.data).__name__}, not bytes")
        else:
            try:
                chunks = self.blobs.chunks(blob_id)
            except FileNotFoundError:
                raise ObjectCorrupted(
                    f"{what} is corrupted: {self._blob_path(blob_id)} is missing"
                ) from None
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
            yield chunk
        if (actual := digest.hexdigest()) != blob_id:
            raise ObjectCorrupted(f"{what} is corrupted: its bytes hash to {actual}")

    def read_blob(self, blob_id: str, path_hint: str = "") -> bytes:
        """The blob's bytes, re-hashed: raises ObjectCorrupted if they no longer match."""
        return b"".join(self.iter_blob(blob_id, path_hint))

    def copy_blob(self, blob_id: str, target: Path, path_hint: str = "",
                  mode: int = 0o644, size: int | None = None) -> None:
        """Write the blob into the new file `target`, streamed and re-hashed (see iter_blob);
        `size`: what its tree entry says it holds (ObjectCorrupted if it holds other).
        On any error, ObjectCorrupted after the last chunk included, `target` is removed."""
        chunks = self.iter_blob(blob_id, path_hint)
        if size is not None:
            chunks = _files.sized(chunks, size, f"tree entry {path_hint!r}", blob_id)
        _files.write_new(target, chunks, mode)

    # -- trees and commits -------------------------------------------------------------

    def tree(self, commit_id: str) -> dict[str, Entry]:
        """The manifest of a commit: relative path -> Entry."""
        with read_conn(self.engine) as conn:
            row = conn.execute(
                text("SELECT tree FROM commits WHERE id = :id"), {"id": commit_id}
            ).first()
        if row is None:
            raise ObjectNotFound(f"commit {commit_id} is not in the store")
        try:
            return parse_tree(self.read_blob(row.tree, f"tree of commit {commit_id}"))
        except TreeError as e:
            raise ObjectCorrupted(f"commit {commit_id}: its tree {row.tree} is corrupt: {e}"
                                  ) from None

    def missing_blobs(self, commit_id: str) -> list[str]:
        """The blobs the commit's files name that the store cannot read (no row, or a blob
        file gone): a stat each, no re-hash (that is fsck's)."""
        ids = sorted({e.blob for e in self.tree(commit_id).values()})
        query = text("SELECT id, data IS NULL AS external FROM blobs WHERE id IN :ids"
                     ).bindparams(bindparam("ids", expanding=True))
        stored: dict[str, bool] = {}
        with read_conn(self.engine) as conn:
            for i in range(0, len(ids), _CHUNK):
                stored.update(conn.execute(query, {"ids": ids[i:i + _CHUNK]}).all())
        return [b for b in ids if b not in stored or (stored[b] and not self.blobs.exists(b))]

    def commit_dir(
        self, path: str | os.PathLike, message: str = "", parent: str | None = None,
        files: Iterable[str] | None = None,
    ) -> str:
        """Commit every regular file and symlink under `path` (recursively), or only `files`
        (relative paths under it), and return the commit id.

        Files whose (size, mtime, ctime, inode) match the stat cache are not read again. A file
        deleted between the scan and its read is left out, with a warning.
        """
        root = str(Path(path).resolve())
        if not os.path.isdir(root):
            raise FileNotFoundError(f"cannot commit {root}: not a directory")
        cache = self._stat_cache_of(root)
        scan = scan_dir(root, None if files is None else set(files), cache, self.inline_max,
                        self.blobs, self._place)
        stats = CommitStats(files=len(scan.entries), hashed=scan.hashed)
        tree_bytes = encode_tree(scan.entries)
        tree_id = hashlib.sha256(tree_bytes).hexdigest()
        scan.small[tree_id] = tree_bytes
        commit_id = hashlib.sha256(
            json.dumps([tree_id, parent, message], separators=(",", ":")).encode()
        ).hexdigest()
        racy_after = self._fs_now(root)
        rows = self._stage_durably(scan)
        _fault and _fault("blobs_staged")
        stats.new_blobs = len(rows)
        # Cached paths no longer regular files here (links are never cached).
        entries, files = scan.entries, scan.files
        gone = [p for p in cache if (p not in entries or entries[p].mode == LINK_MODE)
                and (files is None or p in files)]
        if not rows and not scan.fresh and not gone:  # nothing new: no write transaction
            with read_conn(self.engine) as conn:
                known = self._has_commit(conn, commit_id)
            if known:
                self._stat_memo[root] = cache
                self.last_commit = stats
                return commit_id
        commit = {"id": commit_id, "tree": tree_id, "parent": parent, "message": message}
        try:
            with self.engine.begin() as conn:
                cache = self._write_commit(conn, scan, rows, commit, cache, racy_after, gone)
        except StoreFull as e:  # (engine.py's message; the transaction rolled back)
            raise StoreFull(f"cannot commit {root}: {e}") from e
        _fault and _fault("committed")
        self._stat_memo[root] = cache
        self.last_commit = stats
        return commit_id

    def _stat_cache_of(self, root: str) -> dict[str, tuple]:
        """The stat cache of `root`: path -> (size, mtime_ns, ctime_ns, ino, blob); read from
        the table once, then kept (see _stat_memo)."""
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
        return cache

    def _stage_durably(self, scan: Scan) -> list[dict]:
        """The rows of the scan's blobs not stored yet (_stage_blobs), once every directory a
        blob file was renamed into is fsynced: a row never names a file a crash can lose."""
        try:
            rows = self._stage_blobs(scan.small, scan.big, scan.dirs)
            for d in scan.dirs - {None}:
                _files.fsync_dir(d)
        except OSError as e:
            what, objects = "its tree (or a link's target)", self.blobs.objects
            if err := no_room(e, f"cannot commit {scan.root}: writing {what} into {objects} "
                                 "failed"):
                raise err from e
            raise
        return rows

    def _write_commit(self, conn: Connection, scan: Scan, rows: list[dict], commit: dict,
                      cache: dict, racy_after: int, gone: list[str]) -> dict:
        """The commit's write transaction, in its order: the locks, the checks that its parent
        and the blobs it reuses are stored, the blob rows, the commit row (`commit`: its id,
        tree, parent and message), the stat cache. Returns the root's new stat cache."""
        root = scan.root
        # PostgreSQL (no-ops on SQLite's one write lock): repair waits for commits,
        # commits of one directory (its stat cache rows) take turns.
        lock(conn, "blobs", shared=True)
        lock(conn, f"stat_cache:{root}")
        if commit["parent"] is not None and not self._has_commit(conn, commit["parent"]):
            raise ObjectNotFound(f"parent commit {commit['parent']} is not in the store")
        # The blobs found stored before this transaction must still be: `wtb fsck
        # --repair` removes a row no commit reaches, as these were until now.
        staged = {r["id"] for r in rows}
        known = [b for b in (*scan.small, *scan.big) if b not in staged]
        if gone_blobs := set(known) - self._existing_blobs(conn, known):
            raise StoreError(f"cannot commit {root}: {len(gone_blobs)} of its blobs "
                             "were removed while it was committed (by `wtb fsck "
                             "--repair`?); commit it again")
        executemany(conn, "blobs", rows, "ON CONFLICT (id) DO NOTHING")
        conn.execute(
            text(
                "INSERT INTO commits (id, tree, parent, message, created_at) "
                "VALUES (:id, :tree, :parent, :message, :at) "
                "ON CONFLICT (id) DO NOTHING"
            ),
            {**commit, "at": now_iso()},
        )
        cache = self._update_stat_cache(conn, root, cache, scan.entries, scan.fresh,
                                        racy_after, scan.files, gone)
        _fault and _fault("in_transaction")
        return cache

    def _place(self, tmp: TempBlob, path: str, dirs: set[Path | None]) -> str:
        """Rename a streamed file's temp blob under its hash; return the hash."""
        blob_id = tmp.hash.hexdigest()
        try:
            _fault and _fault("blob_copied")
            dirs.add(self.blobs.place(tmp, blob_id))
            _fault and _fault("blob_written")
        except BaseException as e:
            tmp.discard()
            objects = self.blobs.objects
            if err := no_room(e, f"cannot commit {path}: writing its blob into {objects} failed"):
                raise err from e
            raise
        return blob_id

    def _fs_now(self, near: str | None = None) -> int:
        """The filesystem clock, read like git reads its index mtime (see _update_stat_cache):
        for files committed from `near`."""
        return self.blobs.clock(near)

    def _update_stat_cache(self, conn, root, cache, entries, fresh, racy_after,
                           files=None, gone=()) -> dict:
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
        gone = [*gone, *(rel for rel, _, _ in fresh if rel in cache)]
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
        gone = set(gone)
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
        into place: a corrupted blob, an unsafe path or a full disk leaves `dest` untouched.
        Symlinks are recreated as stored, after every file, and nothing is written beneath one.
        """
        return _files.restore_tree(Path(dest).absolute(), commit_id, self.tree, self.copy_blob,
                                   self.read_blob, lambda step: _fault and _fault(step))

    def diff(self, a: str, b: str) -> Diff:
        """Paths added, removed and changed (content, mode, link target) from commit a to b."""
        ta, tb = self.tree(a), self.tree(b)
        return Diff(
            added=sorted(set(tb) - set(ta)),
            removed=sorted(set(ta) - set(tb)),
            changed=sorted(p for p in set(ta) & set(tb) if ta[p] != tb[p]),
        )

