"""Files for objects.py: the walk of a directory being committed, the read of each file (small
ones as bytes, big ones streamed into a temp blob file while being hashed, so a file never has
to fit in memory), symlinks, and the path checks of a restore.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from wtb_conf.store.errors import ObjectCorrupted, StoreError, StoreFull, UnsafePath
from wtb_conf.store.trees import LINK_MODE, PERM_BITS, unsafe
from wtb_conf.store.trees import plain_parts as _plain_parts

if TYPE_CHECKING:
    from wtb_conf.store.blobdirs import BlobDir

log = logging.getLogger(__name__)

# Bytes per read and write when a file is streamed into or out of the store: large enough that
# the per-call cost vanishes next to hashing, small enough that memory stays flat whatever the
# file's size. A module constant so tests can shrink it.
CHUNK_SIZE = 1 << 20
# Every temp file the store writes under <blob_root>/objects/ starts with this, so a crash's
# leftovers can be told from blobs (fsck removes them as orphans).
TMP_PREFIX = ".tmp-"
_BLOB_ID = re.compile(r"[0-9a-f]{64}")

_NO_ROOM = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large (for the file system or the process's file size limit)",
}


def no_room(e: BaseException, what: str) -> StoreError | None:
    """A StoreError "<what>: the disk is full" if `e` is a write that failed for want of room
    (ENOSPC, EDQUOT, EFBIG); None for any other error."""
    if isinstance(e, OSError) and (reason := _NO_ROOM.get(e.errno)):
        return StoreFull(f"{what}: {reason}")
    return None


# Free space a sweep asks for where it writes (the store, the blob root, the job dirs): with
# less, its first jobs fill the disk and the next ones cannot even be recorded
MIN_FREE = 64 * 2**20


def check_room(dirs: list[str | os.PathLike], need: int = MIN_FREE) -> None:
    """Raise StoreFull naming the first of `dirs` (or its nearest existing parent) whose file
    system has less than `need` bytes free."""
    for d in dirs:
        where = Path(d).absolute()
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        if free < need:
            raise StoreFull(f"{d}: the disk is full: {free // 1024} KiB free, and a sweep "
                            f"needs at least {need // 2**20} MiB there; free some space "
                            "(`wtb rm` and `wtb gc` remove runs you no longer need)")


def walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files and symlinks under root as (posix relative path, lstat).

    Links are never followed: a link to a directory is one entry, not a subtree. Other kinds
    (fifos, sockets, devices) are skipped with a warning: they have no content to store.
    Entries removed while being walked are skipped too (the node deleted them).
    """
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel_dir))
        except (FileNotFoundError, NotADirectoryError):
            log.warning("%s vanished while being committed; left out", os.path.join(root, rel_dir))
            continue
        with it:
            for de in it:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                if de.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    continue
                if not (de.is_file(follow_symlinks=False) or de.is_symlink()):
                    log.warning("%s is not a regular file, directory or symlink; not committed",
                                de.path)
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    log.warning("%s vanished while being committed; left out", de.path)
                    continue
                yield rel, st


def read_head(fd: int, limit: int, size_hint: int) -> bytes:
    """Up to `limit` bytes of fd, fewer at its end. Raw os.read, no buffering layer (a fifth of
    a first commit's time); a small file takes one read plus the one that sees its end."""
    step = max(size_hint + 1, 65536)
    data = os.read(fd, min(limit, step))
    while len(data) < limit and (more := os.read(fd, min(limit - len(data), step))):
        data += more
    return data


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def same_stat(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == (
        b.st_size, b.st_mtime_ns, b.st_ctime_ns, b.st_ino)


def chunks_of(f: BinaryIO) -> Iterator[bytes]:
    """The rest of an open file, CHUNK_SIZE bytes at a time; closes it when done."""
    with f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk


def fsync_dir(path: Path) -> None:
    """Make the renames into a directory durable (a rename is an update of the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempBlob:
    """A blob being written: a temp file in the objects directory (the file system its blobs are
    on, so the final rename is atomic), hashed as it is written, then renamed under its hash."""

    def __init__(self, objects: Path) -> None:
        objects.mkdir(parents=True, exist_ok=True)
        self.fd, self.path = tempfile.mkstemp(dir=objects, prefix=TMP_PREFIX)
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.hash.update(data)
        write_all(self.fd, data)
        self.size += len(data)

    def copy_from(self, src: int, size_hint: int) -> None:
        """Append the rest of the open file `src`, read into one buffer of CHUNK_SIZE bytes,
        or less for a smaller file (a buffer is zeroed when made)."""
        buf = bytearray(min(CHUNK_SIZE, max(size_hint + 1, 65536)))
        view = memoryview(buf)
        with open(src, "rb", buffering=0, closefd=False) as f:
            while n := f.readinto(buf):
                self.write(view[:n])

    def place(self, final: Path) -> Path | None:
        """Rename the temp file to `final`, fsynced first, and return final's directory (to be
        fsynced before anything references the blob). If `final` exists already the blob is
        stored (same name, same bytes): drop the copy, unsynced, and return None."""
        try:
            # Touched: a blob file no row names yet is an orphan to `wtb fsck --repair` only
            # once it is an hour old, and this commit is about to name it.
            os.utime(final)
            self.discard()
            return None
        except PermissionError:  # another user's file: it is there all the same
            self.discard()
            return None
        except FileNotFoundError:
            pass
        os.fsync(self.fd)
        os.fchmod(self.fd, 0o444)
        os.close(self.fd)
        self.fd = -1
        final.parent.mkdir(exist_ok=True)
        os.replace(self.path, final)
        return final.parent

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        Path(self.path).unlink(missing_ok=True)


def write_new(target: Path, chunks: Iterable[bytes], mode: int) -> None:
    """Write `chunks` into the new file `target` (never through a link: O_EXCL, O_NOFOLLOW),
    then set its mode. On any error, a corrupted blob found after the last chunk included,
    the partial file is removed."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        os.fchmod(fd, mode)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def sized(chunks: Iterable[bytes], size: int, what: str, blob_id: str) -> Iterator[bytes]:
    """`chunks`, then ObjectCorrupted if they did not add up to the `size` that `what` (a tree
    entry) says its blob holds: a tree that disagrees with its blob is corrupt."""
    n = 0
    for chunk in chunks:
        n += len(chunk)
        yield chunk
    if n != size:
        raise ObjectCorrupted(f"{what} says {size} bytes, its blob {blob_id} holds {n}: the "
                              "tree is corrupt")


def write_blob(data: bytes, objects: Path, final: Path) -> Path | None:
    """Store `data` as the blob file `final`, durably (see TempBlob.place)."""
    tmp = TempBlob(objects)
    try:
        tmp.write(data)
        return tmp.place(final)
    except BaseException:
        tmp.discard()
        raise


def read_file(path: str, st: os.stat_result, inline_max: int, blobs: BlobDir
              ) -> tuple[bytes | TempBlob, os.stat_result] | None:
    """A regular file's bytes if it has at most inline_max of them, else a TempBlob of `blobs`
    holding them (hashed, not yet placed), with its fstat after the read. None, with a warning,
    if it vanished since the scan or is no longer a regular file: O_NOFOLLOW, a file swapped for
    a link meanwhile is not followed; O_NONBLOCK, nor does one swapped for a fifo block."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise
        log.warning("%s vanished while being committed; left out of the commit", path)
        return None
    tmp = None
    try:
        data = b""
        if st.st_size <= inline_max:
            data = read_head(fd, inline_max + 1, st.st_size)
        if len(data) > inline_max or st.st_size > inline_max:  # (or it grew meanwhile)
            tmp = blobs.temp(path)
            tmp.write(data)
            tmp.copy_from(fd, st.st_size)
        after = os.fstat(fd)
    except IsADirectoryError:  # replaced by a directory
        after = None
    except BaseException as e:
        if tmp is not None:
            tmp.discard()
        if err := no_room(e, f"cannot commit {path}: writing its blob into {blobs.objects} "
                             "failed"):
            raise err from e
        raise
    finally:
        os.close(fd)
    if after is None or not stat.S_ISREG(after.st_mode):
        if tmp is not None:
            tmp.discard()
        log.warning("%s was replaced while being committed; left out of the commit", path)
        return None
    return (data if tmp is None else tmp), after


def read_link(path: str) -> bytes | None:
    """A symlink's target, as bytes; None, with a warning, if it vanished or is no longer a
    link."""
    try:
        return os.fsencode(os.readlink(path))
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EINVAL):
            raise
        log.warning("%s vanished while being committed; left out of the commit", path)
        return None


def refuse_beneath_links(paths: Iterable[str], links: set[str]) -> None:
    """Raise UnsafePath for a path beneath one of `links`: restoring it would write through the
    link, wherever it points."""
    for rel in paths:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if (under := "/".join(parts[:i])) in links:
                raise UnsafePath(f"tree entry {rel!r} lies beneath the symlink {under!r}; "
                                 "refusing to restore it")


def blob_path(objects: Path, blob_id: str) -> Path:
    """objects/ab/cdef... of a blob. Only a SHA-256 hex digest names a file: a forged or
    corrupted row or tree entry (`../../x`) must not make the store open a path elsewhere."""
    return objects / blob_name(blob_id)


def blob_name(blob_id: str) -> str:
    """`ab/cdef...`: where a blob lives under objects/ (see blob_path)."""
    if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
        raise ObjectCorrupted(f"blob id {blob_id!r} is not a SHA-256 hex digest; refusing to "
                              "open a file for it")
    return f"{blob_id[:2]}/{blob_id[2:]}"


def commit_source(root: str, rel: str) -> str:
    """root/rel, for a path named to commit_dir(files=...) (`root` resolved). Refuses what is
    not a plain relative path, and a path whose directory resolves outside root through a
    symlink: its file would be read from elsewhere. The file itself may be a link: it is
    stored as one, never followed, as the walk of a whole directory does."""
    parts = _plain_parts(rel)
    if parts is None:
        raise UnsafePath(f"cannot commit {rel!r} under {root}: not a plain relative path "
                         "(absolute, or with '..', '.' or an empty part); name files relative "
                         "to the directory committed")
    full = os.path.join(root, *parts)
    if not Path(os.path.dirname(full)).resolve().is_relative_to(root):
        raise UnsafePath(f"cannot commit {rel!r} under {root}: its directory resolves outside "
                         f"{root} (through a symlink)")
    return full


def safe_target(dest: Path, rel: str) -> Path:
    """dest/rel, refusing absolute paths, '..' and anything that resolves outside dest."""
    parts = _plain_parts(rel)
    if parts is None:
        raise UnsafePath(f"tree entry {rel!r} is not a plain relative path; refusing to restore it")
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise UnsafePath(f"tree entry {rel!r} resolves outside {dest}; refusing to restore it")
    return target


def restore_tree(dest: Path, commit_id: str, tree_of: Callable[[str], dict],
                 copy_blob: Callable[..., None], read_blob: Callable[[str, str], bytes],
                 fault: Callable[[str], object]) -> list[str]:
    """ObjectStore.restore: the commit's files into a sibling temp dir of `dest`, every blob
    re-hashed as it is copied (copy_blob), then renamed into place. A `dest` that is a
    symlink is followed: the files go where it points (named by the user, as `cp -r` does),
    and the link stays."""
    if dest.is_symlink():
        dest = Path(os.path.realpath(dest))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty; restore into a new directory")
    tree = tree_of(commit_id)
    links = sorted(rel for rel, e in tree.items() if e.mode == LINK_MODE)
    refuse_beneath_links(tree, set(links))
    if why := unsafe(tree):
        raise UnsafePath(f"commit {commit_id} has an unsafe tree: {why}; refusing to restore it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.restoring-"))
    rel = ""
    try:
        for rel, entry in sorted(tree.items()):
            if entry.mode == LINK_MODE:
                continue
            target = safe_target(staging, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            # permission bits only: a setuid or setgid bit (an older store's, a crafted
            # entry's) is never brought back
            copy_blob(entry.blob, target, rel, entry.mode & PERM_BITS, entry.size)
            fault("restore_file_written")
        for rel in links:  # verbatim, wherever they point: a link is data, as in git
            target = safe_target(staging, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            link = read_blob(tree[rel].blob, rel)
            if len(link) != tree[rel].size:
                raise ObjectCorrupted(f"tree entry {rel!r} says {tree[rel].size} bytes, its "
                                      f"blob {tree[rel].blob} holds {len(link)}: the tree is "
                                      "corrupt")
            os.symlink(os.fsdecode(link), target)
        fault("restore_staged")
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if err := no_room(e, f"cannot restore {rel} of commit {commit_id} into {dest} "
                             f"(staged in {dest.parent})"):
            raise err from e
        raise
    return sorted(tree)
