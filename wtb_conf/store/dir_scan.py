"""commit_dir's read of a directory: each regular file and symlink under it (or each file named)
becomes a tree entry, from the stat cache when its stat is unchanged, else read and hashed; a
small file's bytes are kept, a big one is streamed into a blob file on the way (files.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wtb_conf.store import files as _files
from wtb_conf.store.files import TempBlob
from wtb_conf.store.trees import LINK_MODE, PERM_BITS, Entry

if TYPE_CHECKING:
    from wtb_conf.store.blobdirs import BlobDir

# (commit_dir's warnings, under the logger name they always had)
log = logging.getLogger("wtb_conf.store.objects")


@dataclass
class Scan:
    """What a commit of `root` holds, before anything of it is stored in the database."""

    root: str
    files: set[str] | None  # the paths named to commit_dir, or None: all under root
    entries: dict[str, Entry] = field(default_factory=dict)
    small: dict[str, bytes] = field(default_factory=dict)  # blob id -> bytes: small files, link
    # targets (and, once commit_dir adds it, the tree)
    big: dict[str, int] = field(default_factory=dict)  # blob id -> size: in their blob files
    dirs: set[Path | None] = field(default_factory=set)  # where blob files were renamed:
    # fsynced before the rows
    fresh: list[tuple[str, os.stat_result, str]] = field(default_factory=list)  # hashed files,
    # to cache
    hashed: int = 0  # files read and hashed (the rest came from the stat cache)


def scan_dir(root: str, files: set[str] | None, cache: dict[str, tuple], inline_max: int,
             blobs: BlobDir, place: Callable[[TempBlob, str, set[Path | None]], str]) -> Scan:
    """Read `root` (every file under it, or only `files`) into a Scan. `cache`: path -> (size,
    mtime_ns, ctime_ns, ino, blob) of the stat cache; `place` renames a big file's temp blob
    under its hash and returns the hash. A file that vanished before its read is left out
    (files.read_file warns)."""
    scan = Scan(root, files)
    # (locals, not the Scan's attributes: this is the hot loop)
    entries, small, big, dirs, fresh = scan.entries, scan.small, scan.big, scan.dirs, scan.fresh
    hashed = 0
    if files is not None:  # (commit_source: no path named may lead outside root)
        found = [(rel, os.lstat(_files.commit_source(root, rel))) for rel in sorted(files)]
    for rel, st in found if files is not None else _files.walk(root):
        if stat.S_ISLNK(st.st_mode):  # stored as a link, never followed (like git)
            if (target := _files.read_link(os.path.join(root, rel))) is not None:
                small[blob_id := hashlib.sha256(target).hexdigest()] = target
                entries[rel] = Entry(blob_id, len(target), LINK_MODE)
            continue
        c = cache.get(rel)
        if c is not None and c[:4] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            entries[rel] = Entry(c[4], c[0], st.st_mode & PERM_BITS)
            continue
        full = os.path.join(root, rel)  # (not before: this is the hot loop)
        if not stat.S_ISREG(st.st_mode):  # (named in `files`; the walk skips them)
            log.warning("%s is not a regular file or symlink; not committed", full)
            continue
        if (got := _files.read_file(full, st, inline_max, blobs)) is None:
            continue  # vanished: logged
        data, after = got
        hashed += 1
        if isinstance(data, TempBlob):  # big: streamed into a temp blob file
            big[blob_id := place(data, full, dirs)] = size = data.size
        else:
            small[blob_id := hashlib.sha256(data).hexdigest()] = data
            size = len(data)
        entries[rel] = Entry(blob_id, size, st.st_mode & PERM_BITS)  # (no setuid)
        if _files.same_stat(st, after):  # not written to while we read it
            fresh.append((rel, after, blob_id))
    scan.hashed = hashed
    return scan
