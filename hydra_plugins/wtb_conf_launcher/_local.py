"""Local workers: processes forked from the driver, which has already imported Hydra, the
task function and its libraries, so a job starts in milliseconds instead of waiting for Ray.

Forked before the planner runs and never once the driver is connected to Ray: a fork copies
whatever lock another thread holds. (A replacement forked later has only the launcher's own
threads beside it, which hold no lock while they wait on a worker.)
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from ._run import WorkerDied, enter, execute, failed

_fork = multiprocessing.get_context("fork")
_driver_ends: weakref.WeakSet = weakref.WeakSet()  # the driver's end of each worker's pipe
_live: weakref.WeakSet = weakref.WeakSet()  # every worker this process forked
# Ctrl-C (and SIGTERM, which wtb_conf turns into one) is held while a worker is forked and
# registered: one that landed between the fork and `_live.add` left a worker that nothing
# closed, and multiprocessing's exit waited for it forever.
_HELD = {signal.SIGINT, signal.SIGTERM}


def _die_with_parent() -> None:
    """A worker outlives nothing: if the driver is killed, so is the worker (Linux)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _relay(fd: int, name: str) -> None:
    """A worker's output, line by line, to the driver's sys.stdout or sys.stderr as they are
    at each line: while the live view is up, those put it above the view, not through it."""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if lines:
                stream = getattr(sys, name)
                stream.write(b"\n".join(lines).decode(errors="replace") + "\n")
                stream.flush()
        if pending:
            getattr(sys, name).write(pending.decode(errors="replace"))


def _serve(conn: Any, task_function: TaskFunction, hydra_context: HydraContext,
           launch_dir: str, code_paths: list[str], outputs: tuple[int, int]) -> None:
    _die_with_parent()
    # Python's own handlers, not whatever the driver installed for its Ctrl-C: a job's
    # process that gets SIGTERM ends by it (a WorkerDied the launcher retries)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
    for fd, target in zip(outputs, (1, 2), strict=True):
        os.dup2(fd, target)
        os.close(fd)
    # A group of its own: Ctrl-C reaches the driver only, which decides, and a kill reaches the
    # processes the job started too.
    os.setpgrp()
    for end in list(_driver_ends):  # forked copies of the other workers' pipes
        end.close()
    enter(launch_dir, code_paths)
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the driver is gone
            return
        if job is None:
            return
        ret, seconds = execute(task_function, hydra_context, *job)
        try:
            conn.send((ret, seconds))
        except Exception as e:  # a return value that cannot be pickled: the job failed
            conn.send((failed(ret.overrides or [], RuntimeError(
                f"the job's return value cannot be sent back: {type(e).__name__}: {e}")),
                seconds))


class LocalWorker:
    where = "local"

    def __init__(self, task_function: TaskFunction, hydra_context: HydraContext,
                 launch_dir: str, code_paths: list[str]) -> None:
        self.conn, child = _fork.Pipe()
        sys.stdout.flush()  # what the driver printed so far is not the worker's to repeat
        sys.stderr.flush()
        out, err = os.pipe(), os.pipe()
        # Not a daemon: a daemonic process may not start processes of its own, and jobs may.
        self.process = _fork.Process(
            target=_serve, args=(child, task_function, hydra_context, launch_dir, code_paths,
                                 (out[1], err[1])),
            name="wtb-local-worker")
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            self.process.start()
            _live.add(self)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        child.close()
        for (read, write), name in ((out, "stdout"), (err, "stderr")):
            os.close(write)
            threading.Thread(target=_relay, args=(read, name), daemon=True,
                             name=f"wtb-worker-{name}").start()
        _driver_ends.add(self.conn)

    def alive(self) -> bool:
        return self.process.is_alive()

    def submit(self, config: DictConfig, env_vars: dict[str, str], handoff: Any) -> Future:
        future: Future = Future()
        try:
            self.conn.send((config, env_vars, handoff))
        except OSError:  # it died while idle
            future.set_exception(self._died())
            return future
        threading.Thread(target=self._wait, args=(future,), daemon=True).start()
        return future

    def _died(self) -> WorkerDied:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code >= 0:  # not a signal: the job ended the process itself
            return WorkerDied(f"its local worker (pid {self.process.pid}) exited with code "
                              f"{code} in the middle of the job (os._exit or sys.exit from "
                              "the job's code?); not retried: it would do the same again",
                              retry=False)
        name = signal.Signals(-code).name if code is not None else "an unknown cause"
        return WorkerDied(f"its local worker (pid {self.process.pid}) was killed by {name}")

    def _wait(self, future: Future) -> None:
        ready = multiprocessing.connection.wait([self.conn, self.process.sentinel])
        if self.conn in ready:
            try:
                future.set_result(self.conn.recv())
                return
            except (EOFError, OSError):
                pass
            except BaseException as e:  # a result that does not unpickle here
                future.set_exception(RuntimeError(
                    f"the job's result cannot be read back: {type(e).__name__}: {e}"))
                return
        future.set_exception(self._died())

    def kill(self) -> None:
        """The worker and whatever the job started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        # before its setpgrp it has no group of its own yet
        with contextlib.suppress(ProcessLookupError, AttributeError):
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        """Ask it to exit after its job; `close` waits for that."""
        with contextlib.suppress(OSError):
            self.conn.send(None)

    def close(self, deadline: float) -> None:
        self.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.kill()


def close_all(deadline: float) -> None:
    """Every worker still up, whichever pool had it (or none yet): on the way out of a sweep
    that ended early, so that no exit path waits on a worker that waits on us."""
    workers = list(_live)
    for worker in workers:
        worker.stop()
    for worker in workers:
        worker.close(deadline)
