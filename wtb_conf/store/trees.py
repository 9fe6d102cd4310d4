"""Trees: the JSON manifest of a commit's files, written by a commit and checked wherever it is
read (restore, diff, fsck). A tree re-hashes to its id, but its id is only what its writer
chose: a store edited by hand, or by someone hostile, can hold a well-hashed tree of any
shape, so every entry is checked for type and shape before anything trusts it.

An entry is `[path, blob, size, mode]`: a plain relative posix path, the blob's SHA-256 hex
digest, the blob's size in bytes, and the mode: git's 0o120000 for a symlink, else the file's
permission bits. Only `PERM_BITS` (rwx for user, group and others) are kept, on commit and on
restore: a setuid, setgid or sticky bit is never stored nor brought back (an older store's
entries may hold them; restore strips them).
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

TREE_FORMAT = 1
LINK_MODE = 0o120000  # git's mode for a symlink
PERM_BITS = 0o777  # what a file's mode keeps: no setuid, setgid or sticky bit
_DIGEST = re.compile(r"[0-9a-f]{64}")


class Entry(NamedTuple):
    blob: str
    size: int
    mode: int


class TreeError(ValueError):
    """A tree whose bytes are not a well-formed manifest; the message says what is wrong."""


def encode(entries: dict[str, Entry]) -> bytes:
    """The tree's bytes: the entries sorted by path, compact JSON."""
    doc = {"format": TREE_FORMAT,
           "entries": [[p, e.blob, e.size, e.mode] for p, e in sorted(entries.items())]}
    return json.dumps(doc, separators=(",", ":")).encode()


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0  # (not a bool, not a float)


def parse(data: object) -> dict[str, Entry]:
    """A tree's entries, path -> Entry. Raises TreeError for bytes that are not JSON, a
    document that is not a manifest, or any entry of the wrong type or shape."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TreeError(f"its data is {type(data).__name__}, not bytes")
    try:
        doc = json.loads(bytes(data))
    except ValueError as e:  # (UnicodeDecodeError too)
        raise TreeError(f"it is not JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise TreeError("it is not a manifest (a JSON object with a list of entries)")
    out: dict[str, Entry] = {}
    new = Entry.__new__
    for n, item in enumerate(doc["entries"]):
        # the usual entry in one test (this loop is most of fsck's time on a big store); the
        # checks one by one only to say what is wrong
        if type(item) is list and len(item) == 4:
            path, blob, size, mode = item
            if (type(path) is str and type(blob) is str and len(blob) == 64
                    and type(size) is int and size >= 0 and type(mode) is int
                    and (0 <= mode <= 0o7777 or mode == LINK_MODE) and path not in out
                    and _DIGEST.fullmatch(blob)):
                out[path] = new(Entry, blob, size, mode)
                continue
        _refuse(n, item, out)
    return out


def _refuse(n: int, item: object, seen: dict[str, Entry]) -> None:
    """Raise the TreeError that says what is wrong with entry `n`."""
    if not isinstance(item, list) or len(item) != 4:
        raise TreeError(f"entry {n} is {_clip(item)}, not [path, blob, size, mode]")
    path, blob, size, mode = item
    if not isinstance(path, str):  # (whether it is safe to restore: unsafe())
        raise TreeError(f"entry {n} has the path {_clip(path)}, not text")
    if not isinstance(blob, str) or not _DIGEST.fullmatch(blob):
        raise TreeError(f"entry {path!r}: its blob id {_clip(blob)} is not a SHA-256 "
                        "hex digest")
    if not _is_count(size):
        raise TreeError(f"entry {path!r} has the size {_clip(size)}, not a byte count")
    if not _is_count(mode) or (mode > 0o7777 and mode != LINK_MODE):
        raise TreeError(f"entry {path!r} has the mode {_clip(mode)}, neither permission "
                        "bits nor a symlink's 0o120000")
    raise TreeError(f"entry {path!r} occurs twice")


def _clip(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def plain_parts(rel: object) -> list[str] | None:
    """The parts of a plain relative posix path; None for an absolute one, one with an empty,
    '.' or '..' part, a backslash or a NUL."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return None
    parts = rel.split("/")
    return None if any(p in ("", ".", "..") for p in parts) else parts


def unsafe(tree: dict[str, Entry]) -> str | None:
    """Why a tree cannot be restored as it stands, or None: a path that is not plain and
    relative, or an entry that is a file (or symlink) and also a directory of another
    entry (`x` and `x/y`: restoring one would fail on, or write through, the other)."""
    dirs: set[str] = set()
    for rel in tree:
        if plain_parts(rel) is None:
            return f"entry {rel!r} is not a plain relative path"
        parent = rel.rpartition("/")[0]
        while parent and parent not in dirs:  # each directory once: linear in the entries
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    if clash := sorted(tree.keys() & dirs):
        what = "symlink" if tree[clash[0]].mode == LINK_MODE else "file"
        under = min(p for p in tree if p.startswith(clash[0] + "/"))
        return f"entry {clash[0]!r} is a {what}, and the entry {under!r} lies beneath it"
    return None
