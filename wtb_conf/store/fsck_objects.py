"""`wtb fsck`'s check of the objects: commits, trees and blobs (fsck.py runs it in its snapshot).

Every column read is checked for type and shape before it is trusted: SQLite keeps a value of
any type in any column (`CAST('x' AS BLOB) || data` is TEXT), and a hand-edited or hostile
store can hold a well-hashed tree of any shape. Whatever is found is one problem, one line.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Row, text

from wtb_conf.store.errors import ObjectCorrupted
from wtb_conf.store.trees import Entry, TreeError, parse, unsafe

if TYPE_CHECKING:
    from wtb_conf.store import Store
    from wtb_conf.store.fsck import Report

_BYTES = (bytes, bytearray, memoryview)


def _kind(value: object) -> str:
    return {str: "text", bytes: "bytes", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)


def _name(value: object) -> str:
    """An id for a message: as it is, or its repr when it is not text (a hand-edited row)."""
    return value if isinstance(value, str) else repr(value)


def _bad_size(size: object) -> str | None:
    if type(size) is not int or size < 0:
        return f"its row's size is {size!r} ({_kind(size)}), not a byte count"
    return None


class _Trees:
    """Each tree read once: parsed, checked, and the blobs its entries reach recorded."""

    def __init__(self, tree_of: dict[str, str]) -> None:
        self.tree_of = tree_of  # tree -> the first commit that has it, to name it
        self.reached: dict[str, tuple[str, str]] = {}  # blob -> (commit, path) first to reach it
        self.claimed: dict[str, tuple[int, str, str]] = {}  # blob -> (size, tree, path) claimed
        self.bad: dict[str, str] = {}  # blob or tree -> why it is corrupted
        self.unsafe: dict[str, str] = {}  # tree -> why it cannot be restored

    def walk(self, tree: str, data: object) -> None:
        if not isinstance(data, _BYTES):
            self.bad[tree] = f"its row holds {_kind(data)}, not bytes"
            return
        if (digest := hashlib.sha256(data).hexdigest()) != tree:
            self.bad[tree] = f"its bytes hash to {digest}"
            return
        try:
            entries: dict[str, Entry] = parse(data)
        except TreeError as e:
            self.bad[tree] = f"it is not a tree: {e}"
            return
        if why := unsafe(entries):
            self.unsafe[tree] = why
        commit, reached, claimed = self.tree_of[tree], self.reached, self.claimed
        for path, (blob, size, _) in entries.items():
            if blob not in reached:
                reached[blob] = (commit, path)
                claimed[blob] = (size, tree, path)
            elif claimed[blob][0] != size:
                self.bad[tree] = (f"entry {path!r} says {size} bytes, the entry "
                                  f"{claimed[blob][2]!r} of tree {claimed[blob][1]} says "
                                  f"{claimed[blob][0]} for the same blob {blob}")

    def sizes_agree(self, sizes: dict[str, int]) -> None:
        """Every entry's size must be its blob's (`sizes`: blob -> its size, from its row)."""
        for blob, (size, tree, path) in self.claimed.items():
            if blob in sizes and sizes[blob] != size and tree not in self.bad:
                self.bad[tree] = (f"entry {path!r} says {size} bytes, its blob {blob} holds "
                                  f"{sizes[blob]}")


def check_objects(store: Store, conn: Connection, report: Report) -> set[str]:
    """Commits, trees and blobs; records the blobs no commit reaches. Returns the ids a blob
    file may have without being an orphan: every blob row, and every blob a commit reaches."""
    commits, tree_of = _read_commits(conn, report)
    trees = _Trees(tree_of)
    gone: dict[str, str] = {}  # blob (or tree) -> why it is missing
    blob_ids, file_rows, sizes = _read_blob_rows(conn, report, trees)
    _check_blob_files(store, trees, file_rows, sizes, gone)
    trees.sizes_agree({b: s for b, s in sizes.items() if b not in trees.bad})
    gone.update((t, "it is not in the store") for t in tree_of.keys() - blob_ids)
    _report_trees(report, commits, trees, gone)
    gone.update((b, "it is not in the store") for b in trees.reached.keys() - blob_ids)
    _report_blobs(report, trees, gone, blob_ids, file_rows)
    report.checked.update(commits=len(commits), trees=len(tree_of), blobs=len(blob_ids),
                          blob_files=len(file_rows))
    return blob_ids | trees.reached.keys() | tree_of.keys()


def _read_commits(conn: Connection, report: Report) -> tuple[list[Row], dict[str, str]]:
    """The commits rows whose id is text (a problem for each other one), and tree -> the first
    commit that has it; a problem for each parent that is not in the store."""
    commits = []
    for row in conn.execute(text("SELECT id, tree, parent FROM commits")):
        if isinstance(row.id, str):
            commits.append(row)
        else:
            report.add("corrupt_row", repr(row.id), f"a commits row has the id {row.id!r} "
                       f"({_kind(row.id)}), not a commit id; nothing can name it")
    report.commits = {c.id for c in commits}
    tree_of: dict[str, str] = {}
    for c in commits:
        tree_of.setdefault(c.tree, c.id)
        if c.parent is not None and c.parent not in report.commits:
            report.add("missing_commit", c.id, f"commit {c.id} names parent {_name(c.parent)}, "
                       "which is not in the store")
    return commits, tree_of


def _read_blob_rows(conn: Connection, report: Report, trees: _Trees
                    ) -> tuple[set[str], dict[str, int], dict[str, int]]:
    """One pass over the blobs table: inline blobs re-hashed, inline trees read as they come.
    Returns the blob ids, blob -> size of the blobs stored as files, and blob -> size of the
    rows whose size is a byte count."""
    bad, tree_of = trees.bad, trees.tree_of
    blob_ids: set[str] = set()
    file_rows: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for bid, size, data in conn.execute(text("SELECT id, size, data FROM blobs")):
        if not isinstance(bid, str):
            report.add("corrupt_row", repr(bid), f"a blobs row has the id {bid!r} "
                       f"({_kind(bid)}), not a blob id; nothing can name it")
            continue
        blob_ids.add(bid)
        if why := _bad_size(size):
            bad[bid] = why
        else:
            sizes[bid] = size
        if data is None:
            file_rows[bid] = size
        elif bid in tree_of:
            trees.walk(bid, data)
        elif not isinstance(data, _BYTES):
            bad[bid] = f"its row holds {_kind(data)}, not bytes"
        elif (digest := hashlib.sha256(data).hexdigest()) != bid:
            bad[bid] = f"its bytes hash to {digest}"
        elif bid in sizes and len(data) != size:
            bad[bid] = f"it holds {len(data)} bytes, its row says {size}"
    return blob_ids, file_rows, sizes


def _check_blob_files(store: Store, trees: _Trees, file_rows: dict[str, int],
                      sizes: dict[str, int], gone: dict[str, str]) -> None:
    """The blob files: the trees too big to be inline read (before the rest: what they reach
    is then known), then each file a commit reaches re-hashed, streamed, once."""
    bad = trees.bad
    for tree in trees.tree_of.keys() & file_rows.keys():
        try:
            trees.walk(tree, b"".join(store.blobs.chunks(tree)))
        except FileNotFoundError:
            gone[tree] = f"its file {store._blob_path(tree)} is missing"
        except ObjectCorrupted as e:  # an id that is no digest names no file
            bad[tree] = str(e)
    for bid in trees.reached.keys() & file_rows.keys():
        try:
            digest, size = store.blobs.digest(bid)
        except FileNotFoundError:
            gone[bid] = f"its file {store._blob_path(bid)} is missing"
            continue
        except ObjectCorrupted as e:
            bad[bid] = str(e)
            continue
        if digest != bid:
            bad[bid] = f"its bytes hash to {digest}"
        elif bid in sizes and size != file_rows[bid]:
            bad[bid] = f"its file holds {size} bytes, its row says {file_rows[bid]}"


def _report_trees(report: Report, commits: list[Row], trees: _Trees,
                  gone: dict[str, str]) -> None:
    """A problem for each commit whose tree is missing, corrupt or unsafe to restore."""
    for c in commits:
        if why := gone.get(c.tree) or trees.bad.get(c.tree):
            what = "missing" if c.tree in gone else "corrupt"
            report.add(f"{what}_tree", c.id, f"commit {c.id}: its tree {_name(c.tree)} is {what}: "
                       f"{why}")
        elif why := trees.unsafe.get(c.tree):
            report.add("unsafe_tree", c.id, f"commit {c.id}: its tree {c.tree} cannot be "
                       f"restored: {why}")


def _report_blobs(report: Report, trees: _Trees, gone: dict[str, str], blob_ids: set[str],
                  file_rows: dict[str, int]) -> None:
    """A problem for each blob a commit reaches that is missing or corrupted (in the order
    they were reached), and for each orphan: a blob no commit reaches (report.orphans)."""
    reached, bad = trees.reached, trees.bad
    for bid in sorted(reached.keys() & (gone.keys() | bad.keys()), key=reached.__getitem__):
        what = "missing" if bid in gone else "corrupted"
        report.add(f"{what[:7]}_blob", bid, f"blob {bid} (file {reached[bid][1]} of commit "
                   f"{reached[bid][0]}) is {what}: {gone.get(bid) or bad[bid]}")
    orphans = sorted(blob_ids - reached.keys() - trees.tree_of.keys())
    report.orphans["blobs"] = orphans
    for bid in orphans:
        where = "its file" if bid in file_rows else "inline"
        report.add("orphan_blob", bid, f"blob {bid} ({where}) is reached by no commit")
