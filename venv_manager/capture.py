"""Run a child with its stdout and stderr read in chunks and kept only up to a cap.

A RunCode snippet can print without end (one call printed 200 MB: the server grew from 92 MB
to 1.1 GB and the audit database by 400 MB). Each stream is read in CHUNK-sized pieces as the
child writes it: the first `cap` bytes are kept, the rest is only counted and hashed, so the
server's memory stays bounded whatever the child prints, and the child never blocks on a full
pipe. The caller gets the head, a marker saying how much was cut, and the SHA-256 and size of
the whole stream.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import IO

OUTPUT_CAP = 1 << 20  # bytes of stdout and of stderr a RunCode answer holds (each)
AUDIT_HEAD = 64 << 10  # bytes of each stream the audit database keeps (with its digest)
CHUNK = 64 << 10
DRAIN_S = 5.0  # after the child ends: how long a grandchild holding its pipe may keep it

# Bytes that are not UTF-8 become one "?" each, not U+FFFD (3 bytes in UTF-8): the text is then
# never longer than the bytes it shows, and two capped binary streams still fit in one gRPC
# message (4 MB by default; 2 x 3 MiB would not).
codecs.register_error("venv_manager.question_mark", lambda e: ("?" * (e.end - e.start), e.end))


@dataclass
class Stream:
    head: bytes  # the first `cap` bytes
    size: int  # bytes the child wrote in all
    sha256: str  # of all of them

    def text(self, limit: int) -> str:
        """The first `limit` bytes as text, and a marker when more was written."""
        shown = self.head[:limit].decode("utf-8", "venv_manager.question_mark")
        more = self.size - min(limit, len(self.head))
        return shown + (truncated_marker(more) if more > 0 else "")


def truncated_marker(more: int) -> str:
    return f"\n… [truncated: {more} bytes more]"


class _Reader(threading.Thread):
    def __init__(self, pipe: IO[bytes], cap: int) -> None:
        super().__init__(daemon=True)  # daemon: a grandchild holding the pipe cannot block exit
        self.pipe, self.cap = pipe, cap
        self.parts: list[bytes] = []
        self.kept = self.size = 0
        self.digest = hashlib.sha256()

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError), self.pipe:
            while chunk := self.pipe.read1(CHUNK):
                self.size += len(chunk)
                self.digest.update(chunk)
                if self.kept < self.cap:
                    self.parts.append(chunk[:self.cap - self.kept])
                    self.kept += len(self.parts[-1])

    def stream(self) -> Stream:
        return Stream(b"".join(self.parts), self.size, self.digest.hexdigest())


def run_capped(argv: list[str], timeout_s: float, cwd: str | os.PathLike,
               cap: int = OUTPUT_CAP) -> tuple[Stream, Stream, int, bool]:
    """Run argv (no shell): (stdout, stderr, exit code, timed out). On timeout the child's
    whole process group is killed (exit code -1), so what it started goes too."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
    readers = [_Reader(proc.stdout, cap), _Reader(proc.stderr, cap)]
    for r in readers:
        r.start()
    timed_out = False
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = -1
    except BaseException:  # the server stopping mid-call: take the child with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    for r in readers:
        r.join(DRAIN_S)  # what is read by then is the answer; a straggler reads on, unheard
    return readers[0].stream(), readers[1].stream(), code, timed_out
