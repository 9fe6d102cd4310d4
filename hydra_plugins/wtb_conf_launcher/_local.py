"""Local workers: processes forked from the driver, which has already imported Hydra, the
task function and its libraries, so a job starts in milliseconds instead of waiting for Ray.

Forked only while the driver has no threads that could hold a lock at fork time (before it
connects to Ray); a worker that dies is not replaced by another fork once Ray is up.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import signal
import threading
import weakref
from concurrent.futures import Future
from typing import Any

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from ._run import WorkerDied, enter, execute

_fork = multiprocessing.get_context("fork")
_driver_ends: weakref.WeakSet = weakref.WeakSet()  # the driver's end of each worker's pipe


def _die_with_parent() -> None:
    """A worker outlives nothing: if the driver is killed, so is the worker (Linux)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _serve(conn: Any, task_function: TaskFunction, hydra_context: HydraContext,
           launch_dir: str, code_paths: list[str]) -> None:
    _die_with_parent()
    for end in list(_driver_ends):  # forked copies of the other workers' pipes
        end.close()
    # Ctrl-C reaches the whole process group: the driver decides, and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    enter(launch_dir, code_paths)
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the driver is gone
            return
        if job is None:
            return
        conn.send(execute(task_function, hydra_context, *job))


class LocalWorker:
    where = "local"

    def __init__(self, task_function: TaskFunction, hydra_context: HydraContext,
                 launch_dir: str, code_paths: list[str]) -> None:
        self.conn, child = _fork.Pipe()
        # Not a daemon: a daemonic process may not start processes of its own, and jobs may.
        self.process = _fork.Process(
            target=_serve, args=(child, task_function, hydra_context, launch_dir, code_paths),
            name="wtb-local-worker")
        self.process.start()
        child.close()
        _driver_ends.add(self.conn)

    def submit(self, config: DictConfig, env_vars: dict[str, str]) -> Future:
        future: Future = Future()
        self.conn.send((config, env_vars))
        threading.Thread(target=self._wait, args=(future,), daemon=True).start()
        return future

    def _wait(self, future: Future) -> None:
        ready = multiprocessing.connection.wait([self.conn, self.process.sentinel])
        if self.conn in ready:
            try:
                future.set_result(self.conn.recv())
                return
            except (EOFError, OSError):
                pass
        self.process.join(timeout=5)
        future.set_exception(WorkerDied(
            f"its local worker (pid {self.process.pid}) died with exit code "
            f"{self.process.exitcode}"))

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.kill()
