"""The pool of workers a batch runs on: local workers (forked from the driver) for the
driver's own interpreter when allowed, Ray actors otherwise; Ray starts on the first job
that needs it. The Scheduler (_core.py) asks it for workers and hands jobs to them.
docs/launcher.md tells the story."""

from __future__ import annotations

import atexit
import os
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ._local import LocalWorker
from .launcher import WtbRayLauncher
from .plan import Job, Plan
from .settings import LauncherError, local_cpus, slots

RAY_START_TIMEOUT_S = 180  # ray.init takes 5-6 s here; past this something is wrong, say so


class Pool:
    """Workers per interpreter ("" is the driver's): local workers for the driver's own when
    allowed, Ray actors otherwise. At most `size` exist at once; an idle one makes room for
    another interpreter's when the pool is full. Ray starts on the first job that needs it."""

    def __init__(self, launcher: WtbRayLauncher, params: dict[str, Any]) -> None:
        # not the launcher itself: no reference cycle, so a pool goes with its launcher
        self.task_function, self.hydra_context = launcher.task_function, launcher.hydra_context
        self.params = params
        self.launch_dir = os.getcwd()
        self.code_paths = [str(Path(p).absolute()) for p in params.get("code_paths") or []]
        self.local = bool(params["local_workers"]) and not (
            params.get("address") or os.environ.get("RAY_ADDRESS"))
        self.cluster: Any = None  # _ray.Cluster, once a job needs Ray
        self.idle: dict[str, list[Any]] = {}
        self.workers: list[Any] = []  # every live one, idle or busy
        # when the launcher is gone (Hydra's test suites make one per test), or at exit: before
        # multiprocessing's own exit handler, which would wait for the workers forever
        atexit.register(weakref.finalize(self, close_workers, self.workers, self.idle))
        self.size = params.get("num_actors") or slots(local_cpus(), params["num_cpus"])
        self.shared: list[Any] | None = None  # per batch, for actors
        self.ray_slots = 0  # actors the cluster can place at once, once Ray is up

    # -- Ray, on demand
    def start_ray(self) -> Future:
        if self.cluster is None:
            if not (self.params.get("address") or os.environ.get("RAY_ADDRESS")):
                # Ray's own default for a new local cluster (token auth; ~/.ray/auth_token
                # written the first time). The holder starts the cluster and the driver joins it
                # by address, for which Ray assumes nothing: both must be told, before Ray is
                # imported (it reads the mode once).
                os.environ.setdefault("RAY_AUTH_MODE", "token")
            from ._ray import Cluster

            self.cluster = Cluster(self.params.get("address"), self.params["init_kwargs"],
                                   None if self.params.get("shared_disk", True)
                                   else self.launch_dir)
        return self.cluster.start()

    def ray_up(self) -> bool:
        """Whether actors can be made now; raises if Ray could not start."""
        ready = self.start_ray()
        if not ready.done():
            if time.monotonic() - self.cluster.started > RAY_START_TIMEOUT_S:
                raise RuntimeError(
                    f"Ray did not start within {RAY_START_TIMEOUT_S} s (hydra.launcher.address="
                    f"{self.cluster.address!r}); is the cluster reachable?")
            return False
        ready.result()  # raises what stopped Ray from starting
        resources = self.cluster.resources
        self.ray_slots = slots(resources.get("CPU", 0), self.params["num_cpus"])
        if self.params["num_cpus"] > resources.get("CPU", 0):  # Ray would wait forever
            raise LauncherError(
                f"hydra.launcher.num_cpus={self.params['num_cpus']} but the Ray cluster has "
                f"{resources.get('CPU', 0)} CPUs; ask for at most that many")
        if not self.local and not self.params.get("num_actors"):
            self.size = slots(resources.get("CPU", 0), self.params["num_cpus"])
        return True

    # -- workers
    def _forkable(self) -> bool:
        # Forking a process with Ray's threads in it could copy a held lock into the child.
        return self.local and self.cluster is None

    def _new(self, plan: Plan) -> Any:
        if not plan.interpreter and self._forkable():
            worker = LocalWorker(self.task_function, self.hydra_context, self.launch_dir,
                                 self.code_paths)
        else:
            if not self.ray_up():
                return None
            from . import _ray

            if self.shared is None:
                self.shared = _ray.shared(self.hydra_context, self.task_function)
            worker = _ray.new_worker(plan, self.params, self.launch_dir, self.cluster)
        self.workers.append(worker)
        return worker

    def fork_ahead(self, n: int) -> None:
        """Fork local workers now, before a planner may start threads of its own."""
        while self._forkable() and len(self.workers) < min(self.size, n):
            self.release(self._new(Plan()), Plan())

    def acquire(self, plan: Plan, limit: int) -> Any | None:
        key = plan.interpreter
        while self.idle.get(key):
            worker = self.idle[key].pop()
            if worker.alive():
                return worker
            self.discard(worker)  # it died while idle
        on_ray = bool(plan.interpreter) or not self._forkable()
        if on_ray and not self.ray_up():
            return None
        full = len(self.workers) >= min(self.size, limit)
        if full or (on_ray and self.actors() >= self.ray_slots):
            # move an idle worker's CPU here (an idle actor keeps its CPUs on the cluster)
            other = next((ws for ws in self.idle.values()
                          if ws and (full or not isinstance(ws[-1], LocalWorker))), None)
            if other is None:
                return None
            self.discard(other.pop())
        return self._new(plan)

    def actors(self) -> int:
        return sum(not isinstance(w, LocalWorker) for w in self.workers)

    def warm(self, plan: Plan, limit: int) -> None:
        """Make a worker for a job that cannot start yet, so it is up when the job can."""
        key = plan.interpreter
        if len(self.workers) < min(self.size, limit) and not self.idle.get(key):
            worker = self._new(plan)
            if worker is not None:
                self.release(worker, plan)

    def release(self, worker: Any, plan: Plan) -> None:
        self.idle.setdefault(plan.interpreter, []).append(worker)

    def discard(self, worker: Any) -> None:
        self.workers.remove(worker)
        worker.kill()
        if not isinstance(worker, LocalWorker) and self.cluster is not None:
            # a lost node takes its CPUs along: count only what is left, or an actor for a
            # retried job would wait forever for CPUs that idle actors hold
            self.cluster.refresh()

    def submit(self, worker: Any, job: Job, plan: Plan) -> Future:
        if isinstance(worker, LocalWorker):
            return worker.submit(job.config, plan.env_vars, plan.handoff)
        return worker.submit(job.config, plan.env_vars, plan.handoff, self.shared)


def close_workers(workers: list[Any], idle: dict[str, list[Any]]) -> None:
    """Stop every worker of a pool: each is asked to stop, then closed (killed if still busy
    two seconds on); the pool's lists are emptied."""
    for worker in workers:
        worker.stop()
    deadline = time.monotonic() + 2  # then a busy worker is killed, with its job's processes
    for worker in workers:
        worker.close(deadline)
    workers.clear()
    idle.clear()  # an actor goes when the last handle to it does
