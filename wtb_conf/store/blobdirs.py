"""Where blobs above inline_max live: a directory (local, or shared by every node: NFS...) or an
object store through fsspec (`s3://bucket/prefix`). Both name a blob `<root>/objects/ab/cdef...`
after its SHA-256 and never hold a partial blob under that name; objects.py re-hashes every
blob it reads, whichever holds it.

`open_blob_dir(blob_root)` picks one from the string: a URL whose scheme is not `file` is an
object store, anything else a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from wtb_conf.store import files as _files
from wtb_conf.store import s3_errors
from wtb_conf.store.errors import StoreError
from wtb_conf.store.files import TMP_PREFIX, TempBlob

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")


class BlobDir(Protocol):
    """What objects.py and fsck.py need of the place blob files live. A location (`loc`) is a
    blob file's path or URL as `scan()` lists it and messages name it."""

    root: str  # the blob root, as messages name it
    objects: str  # <root>/objects

    def path(self, blob_id: str) -> Path | str:
        """Where the blob lives; ObjectCorrupted for an id that is no SHA-256 digest."""
    def temp(self, near: str) -> TempBlob:
        """A temp blob to stream the file `near` into (files.read_file)."""
    def place(self, tmp: TempBlob, blob_id: str) -> Path | None:
        """Store `tmp` as the blob; a directory to fsync before a row names it, or None."""
    def write(self, blob_id: str, data: bytes) -> Path | None:
        """Store `data` as the blob (see place)."""
    def exists(self, blob_id: str) -> bool: ...
    def chunks(self, blob_id: str) -> Iterator[bytes]:
        """The stored bytes, CHUNK_SIZE at a time; FileNotFoundError (now) if missing."""
    def digest(self, blob_id: str) -> tuple[str, int]:
        """SHA-256 hex digest and size of the stored bytes; FileNotFoundError if missing."""
    def clock(self, near: str | None) -> int:
        """The file-system clock, in ns, of the files committed from `near`."""
    def check(self) -> None:
        """Raise a StoreError saying what to do if blobs cannot be stored here."""
    def scan(self) -> tuple[dict[str, str], list[str], list[str]]:
        """Blob files by id, temp files a writer left, and anything else under objects/."""
    def modified(self, loc: str) -> float | None:
        """The file's modification time (epoch seconds); None if it is gone."""
    def remove(self, loc: str) -> None:
        """Delete a file scan() listed; nothing if it is gone."""


def open_blob_dir(blob_root: str | os.PathLike) -> BlobDir:
    root = os.fspath(blob_root)
    if "::" in root.partition("/")[0]:  # fsspec's chained URLs (simplecache::s3://...)
        raise StoreError(f"{root}: a chained fsspec URL cannot hold blobs; give a directory "
                         "or s3://bucket/prefix")
    if (scheme := _SCHEME.match(root)) is None:
        return LocalBlobDir(root)
    if scheme.group(1).lower() == "file":
        return LocalBlobDir(root[scheme.end():])
    if scheme.group(1).lower() not in ("s3", "s3a"):
        # other fsspec file systems (sftp, hdfs, local://) write an object in place: a killed
        # commit would leave part of a blob under its final name
        raise StoreError(f"{root}: blobs can go to a directory or to S3 (s3://), whose "
                         f"uploads are whole or nothing; not {scheme.group(1)!r}")
    return FsspecBlobDir(root)


def blob_id_of(loc: str) -> str:
    """The id a location `.../objects/ab/cdef...` names: its last two parts, joined."""
    head, _, name = loc.rpartition("/")
    return head.rpartition("/")[2] + name


class LocalBlobDir:
    """Blob files in a directory: written into a temp file beside them, fsynced and renamed
    under their hash, atomic on any one file system (a shared one included)."""

    def __init__(self, root: str) -> None:
        self.base = Path(root).resolve()
        self.objects_dir = self.base / "objects"
        self.root, self.objects = str(self.base), str(self.objects_dir)

    def path(self, blob_id: str) -> Path:
        return _files.blob_path(self.objects_dir, blob_id)

    def temp(self, near: str) -> TempBlob:
        return TempBlob(self.objects_dir)  # (the final rename must not cross file systems)

    def place(self, tmp: TempBlob, blob_id: str) -> Path | None:
        return tmp.place(self.path(blob_id))

    def write(self, blob_id: str, data: bytes) -> Path | None:
        return _files.write_blob(data, self.objects_dir, self.path(blob_id))

    def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).exists()

    def chunks(self, blob_id: str) -> Iterator[bytes]:
        return _files.chunks_of(open(self.path(blob_id), "rb", buffering=0))

    def digest(self, blob_id: str) -> tuple[str, int]:
        with open(self.path(blob_id), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size

    def clock(self, near: str | None = None) -> int:
        # The blobs' file system, where commits of the same machine's files were always timed.
        marker = self.base / ".clock"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return marker.stat().st_mtime_ns

    def check(self) -> None:
        pass  # created by the first blob written; a failure there names the file and the dir

    def scan(self) -> tuple[dict[str, str], list[str], list[str]]:
        blobs: dict[str, str] = {}
        tmps, odd = [], []
        for dirpath, _, names in os.walk(self.objects):
            for name in names:
                path = os.path.join(dirpath, name)
                if name.startswith(TMP_PREFIX):
                    tmps.append(path)
                elif os.path.dirname(dirpath) == self.objects and _BLOB_NAME.fullmatch(
                        blob := os.path.basename(dirpath) + name):
                    blobs[blob] = path
                else:
                    odd.append(path)
        return blobs, tmps, odd

    def modified(self, loc: str) -> float | None:
        try:
            return os.stat(loc).st_mtime
        except FileNotFoundError:
            return None

    def remove(self, loc: str) -> None:
        Path(loc).unlink(missing_ok=True)


class StagedBlob(TempBlob):
    """A big file copied to local disk on its way to an object store, hashed as it is copied:
    the object's name is that hash, and the copy is what gets uploaded, so the bytes stored
    under a name are the bytes hashed even if the file changes meanwhile. The copy has no name
    (O_TMPFILE, else unlinked at once), next to the file it copies (its file system has room
    for it, where /tmp may be memory), or in the temp dir if that directory cannot be written:
    a crash leaves nothing behind."""

    def __init__(self, near: str) -> None:
        try:
            self.file = tempfile.TemporaryFile(dir=near or None, prefix=TMP_PREFIX)
        except OSError:
            self.file = tempfile.TemporaryFile(prefix=TMP_PREFIX)
        self.fd, self.path = self.file.fileno(), ""
        self.hash = hashlib.sha256()
        self.size = 0

    def discard(self) -> None:
        if self.fd >= 0:
            self.file.close()
            self.fd = -1


def _modified(info: dict[str, Any]) -> float:
    """An object's modification time from fsspec's info (S3: LastModified, the server's clock);
    now if it has none, so that an orphan of unknown age is never taken for an old one."""
    for key in ("LastModified", "mtime", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float) and value > 0:
            return float(value)
        if isinstance(value, str) and value:
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value).timestamp()
    return time.time()


def _abandon(f: Any) -> None:
    """Drop an upload without storing it: close() would store what was written so far."""
    with contextlib.suppress(Exception):
        f.discard()  # s3fs: aborts the multipart upload, if one was started
    with contextlib.suppress(Exception):
        f.closed = True  # nothing left to flush when it is collected


class FsspecBlobDir:
    """Blobs as objects of an fsspec file system: `s3://bucket/prefix/objects/ab/cdef...`.

    An object appears whole or not at all (one PUT, or a multipart upload completed), so a blob
    is uploaded straight under its name, from a local staged copy (StagedBlob). An object there
    already is not uploaded again. Credentials and endpoint come from the environment, as for
    any boto3 client (S3: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...).
    """

    PART = 8 << 20  # bytes per uploaded part and per ranged read (S3's smallest part: 5 MiB)
    # A reused object older than this is refreshed (S3: copied onto itself, server-side), so
    # that `wtb fsck --repair`, which leaves orphans younger than an hour alone, cannot take
    # it for an old orphan while the commit that reuses it is in flight.
    REFRESH_S = 600.0

    def __init__(self, url: str) -> None:
        self.root = url.rstrip("/")
        self.objects = self.root + "/objects"
        self.protocol = _SCHEME.match(url).group(1).lower()
        self._fs: Any = None
        self._pid = 0

    @property
    def fs(self) -> Any:
        # One per process: a file system's event loop and connections do not survive a fork.
        if self._fs is None or self._pid != os.getpid():
            import fsspec

            # (no listings cache: another process adds and removes objects meanwhile)
            kwargs = {"use_listings_cache": False}
            try:
                self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **kwargs)
            except (ImportError, ValueError) as e:
                raise StoreError(f"the blob root {self.root}: fsspec cannot open "
                                 f"{self.protocol}:// ({e}); give a directory or an "
                                 "s3://bucket/prefix URL") from None
            self._pid = os.getpid()
        return self._fs

    def path(self, blob_id: str) -> str:
        return f"{self.objects}/{_files.blob_name(blob_id)}"

    def temp(self, near: str) -> TempBlob:
        return StagedBlob(os.path.dirname(near))

    def place(self, tmp: TempBlob, blob_id: str) -> Path | None:
        key = self.path(blob_id)
        try:
            with self._io(f"cannot store blob {blob_id}"):
                if (info := self._info(key)) is None:
                    self._upload(key, tmp)
                elif time.time() - _modified(info) > self.REFRESH_S:
                    self._refresh(key, tmp)
        finally:
            tmp.discard()
        return None  # no directory to fsync: a completed PUT is durable

    def write(self, blob_id: str, data: bytes) -> Path | None:
        with self._io(f"cannot store blob {blob_id}"):
            self.fs.pipe_file(self.path(blob_id), data)  # one PUT, or a completed multipart
        return None

    def exists(self, blob_id: str) -> bool:
        with self._io(f"cannot look up blob {blob_id}"):
            return self._info(self.path(blob_id)) is not None

    def chunks(self, blob_id: str) -> Iterator[bytes]:
        with self._io(f"cannot read blob {blob_id}"):
            f = self.fs.open(self.path(blob_id), "rb", block_size=self.PART,
                             cache_type="readahead")
        return self._read(f, blob_id)

    def _read(self, f: Any, blob_id: str) -> Iterator[bytes]:
        with f, self._io(f"cannot read blob {blob_id}"):
            while chunk := f.read(_files.CHUNK_SIZE):
                yield chunk

    def digest(self, blob_id: str) -> tuple[str, int]:
        h, size = hashlib.sha256(), 0
        for chunk in self.chunks(blob_id):
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size

    def clock(self, near: str | None = None) -> int:
        # No local directory of ours: the clock of the committed directory's own file system,
        # read off a file with no name (nothing appears in the directory being committed).
        try:
            f = tempfile.TemporaryFile(dir=near or None, prefix=TMP_PREFIX)
        except OSError:
            f = tempfile.TemporaryFile(prefix=TMP_PREFIX)
        with f:
            return os.fstat(f.fileno()).st_mtime_ns

    def check(self) -> None:
        fs = self.fs
        bucket = self.root[self.root.index("://") + 3:].split("/", 1)[0]
        with self._io("cannot store blobs"):
            try:
                fs.info(bucket)  # HEAD bucket: one request, when a store opens to write
            except FileNotFoundError:
                raise StoreError(s3_errors.no_bucket_message(self.root, "cannot store blobs")
                                 ) from None

    def scan(self) -> tuple[dict[str, str], list[str], list[str]]:
        with self._io("cannot list the blobs"):
            found = self.fs.find(self.objects)
        prefix = self.fs._strip_protocol(self.objects).rstrip("/") + "/"
        blobs: dict[str, str] = {}
        tmps, odd = [], []
        for p in found:
            rel = p[len(prefix):] if p.startswith(prefix) else p
            loc = f"{self.objects}/{rel}"
            if rel.rpartition("/")[2].startswith(TMP_PREFIX):
                tmps.append(loc)
            elif rel.count("/") == 1 and _BLOB_NAME.fullmatch(blob := rel.replace("/", "")):
                blobs[blob] = loc
            else:
                odd.append(loc)
        return blobs, tmps, odd

    def modified(self, loc: str) -> float | None:
        with self._io(f"cannot look up {loc}"):
            info = self._info(loc)
        return None if info is None else _modified(info)

    def remove(self, loc: str) -> None:
        if not loc.startswith(self.objects + "/"):  # only what scan() listed
            raise ValueError(f"{loc} is not under {self.objects}")
        with self._io(f"cannot delete {loc}"), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(loc)

    # -- S3 -------------------------------------------------------------------------------

    def _info(self, key: str) -> dict | None:
        try:
            return self.fs.info(key)
        except FileNotFoundError as e:
            if s3_errors.no_bucket(e):
                raise
            return None

    def _upload(self, key: str, tmp: TempBlob) -> None:
        f = self.fs.open(key, "wb", block_size=self.PART)
        try:
            offset = 0
            while chunk := os.pread(tmp.fd, _files.CHUNK_SIZE, offset):
                f.write(chunk)
                offset += len(chunk)
            f.close()  # the one PUT, or the completion of the multipart upload
        except BaseException:
            _abandon(f)  # (a completion that failed too: its parts would be billed, unseen)
            raise

    def _refresh(self, key: str, tmp: TempBlob) -> None:
        """Make a reused object young again without sending its bytes, if the store can."""
        if tmp.size < 5 << 30:  # (S3 copies at most 5 GiB in one request)
            bucket, _, name = key[key.index("://") + 3:].partition("/")
            self.fs.call_s3("copy_object", Bucket=bucket, Key=name, MetadataDirective="REPLACE",
                            CopySource={"Bucket": bucket, "Key": name})
        else:
            self._upload(key, tmp)

    def _io(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """What the object store raises while `doing`, as a StoreError (s3_errors.py)."""
        return s3_errors.translated(self.root, doing)
