"""The Ray side: a cluster for the sweep (a local one started in a process group of its own,
or one joined by address) and the actors that run jobs on it. Imported only when a batch
needs Ray: Ray's import and start cost nothing to sweeps that do not."""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig
from ray.exceptions import ActorUnschedulableError, RayActorError

from . import _nodes
from ._run import WorkerDied, enter, execute
from .plan import Plan

# The holder starts a local cluster and keeps it until its stdin closes. It runs in a session
# of its own, so the whole cluster can be stopped at once (ray.shutdown stops its processes
# one by one, waiting up to a second for each).
HOLD = """
import json, sys, ray
ray.init(**json.loads(sys.argv[1]))
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


class Cluster:
    """Ray for this process: started on the first `start()`, in the background. `ship`: the
    launch dir to ship to every actor (shared_disk: false)."""

    def __init__(self, address: str | None, init_kwargs: dict[str, Any],
                 ship: str | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.init_kwargs = {"include_dashboard": False, **init_kwargs}
        self.ship = ship
        self.ready: Future | None = None
        self.started = 0.0  # time.monotonic() of start()
        self.holder: subprocess.Popen | None = None
        self.placer: _nodes.Placer | None = None  # once an actor is pinned to a node
        self.resources: dict[str, float] = {}  # the cluster's, as of start() or refresh()

    def start(self) -> Future:
        if self.ready is None:
            self.ready, self.started = Future(), time.monotonic()
            threading.Thread(target=self._start, name="wtb-ray-start", daemon=True).start()
        return self.ready

    def _start(self) -> None:
        assert self.ready is not None
        try:
            address = self.address or self._hold()
            if not ray.is_initialized():
                ray.init(address=address, log_to_driver=True,
                         runtime_env=_nodes.ship(self.ship) if self.ship else None)
            atexit.register(self.stop)  # after ray's own handler, so it runs before it
            self.resources = ray.cluster_resources()
            self.ready.set_result(self.resources)
        except BaseException as e:  # reported by the scheduler, on the main thread
            self.ready.set_exception(e)

    def _hold(self) -> str:
        self.holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, json.dumps(self.init_kwargs)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        address = self.holder.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"a local Ray cluster did not start (ray.init("
                               f"{self.init_kwargs}) exited {self.holder.wait()}); see above")
        return address

    def refresh(self) -> None:
        if self.ready is not None and self.ready.done() and ray.is_initialized():
            self.resources = ray.cluster_resources()
            if self.placer is None or not self.placer.suspect:
                return
            # Ray lists a lost node alive until its health checks give up (tens of seconds):
            # counting its CPUs, the pool would make an actor for a retried job that waits
            # for a CPU an idle actor of ours holds, forever
            lost = sum(n["Resources"].get("CPU", 0) for n in ray.nodes()
                       if n["Alive"] and n["NodeID"] in self.placer.suspect)
            left = self.resources.get("CPU", 0) - lost
            if left >= self.placer.num_cpus:  # (every node suspect: count them all after all)
                self.resources = {**self.resources, "CPU": left}

    def stop(self) -> None:
        """Every result is stored by now: leave, and stop a cluster of our own at once."""
        if ray.is_initialized():
            ray.shutdown()
        if self.holder is not None:  # the group outlives its leader: kill it either way
            try:
                os.killpg(self.holder.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.holder.wait()


@ray.remote
class JobActor:
    def __init__(self, launch_dir: str | None, code_paths: list[str]) -> None:
        # None: the launch dir was shipped; Ray made its copy this worker's cwd
        self.shipped = launch_dir is None
        self.launch_dir = launch_dir or os.getcwd()
        enter(self.launch_dir, code_paths)

    def run(self, config: DictConfig, env_vars: dict[str, str], handoff: Any,
            hydra_context: HydraContext, task_function: TaskFunction,
            singleton_state: dict[Any, Any]) -> tuple[Any, float]:
        Singleton.set_state(singleton_state)
        if self.shipped:
            _nodes.relocate(config, self.launch_dir, _nodes.jobs_root())
        return execute(task_function, hydra_context, config, env_vars, handoff)


class RayWorker:
    """One actor, made now or, for a job pinned to a node, once its interpreter is ready
    there. Arguments shared by every job (`shared`) are shipped once per batch."""

    def __init__(self, actor: Future, where: str, placer: _nodes.Placer | None = None) -> None:
        self.actor = actor  # resolves to the actor handle
        self.where = where
        self.placer, self.node = placer, None

    def pinned(self, node: str) -> None:
        self.node = node
        self.where = f"{self.where}, node {node[:8]}"

    def submit(self, config: DictConfig, env_vars: dict[str, str], handoff: Any,
               shared: list[Any]) -> Future:
        out: Future = Future()

        def failed(e: BaseException) -> None:
            if isinstance(e, RayActorError | ActorUnschedulableError):  # its node is gone, too?
                if self.placer is not None and self.node is not None:
                    self.placer.gone(self.node)
                died = WorkerDied(f"its actor died: {_gist(e)}")
                died.__cause__ = e  # Ray's whole report: in the run's recorded traceback
                out.set_exception(died)
            else:  # raised outside run_job (or the env could not be made): the cause itself
                cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
                out.set_exception(cause)

        def done(f: Future) -> None:
            try:
                out.set_result(f.result())
            except BaseException as e:
                failed(e)

        def made(f: Future) -> None:
            try:
                actor = f.result()
            except BaseException as e:
                failed(e)
                return
            actor.run.remote(config, env_vars, handoff, *shared).future().add_done_callback(
                done)

        self.actor.add_done_callback(made)
        return out

    def kill(self) -> None:
        if self.placer is not None and self.node is not None:
            self.placer.placed[self.node] -= 1
        self.actor.add_done_callback(
            lambda f: f.exception() is None and ray.kill(f.result(), no_restart=True))

    def alive(self) -> bool:
        return True  # Ray reports a dead actor on the job's future

    def stop(self) -> None:
        """Nothing to do: the driver's actors end with its Ray session (Cluster.stop)."""

    def close(self, deadline: float) -> None:
        pass


def _gist(error: BaseException, limit: int = 300) -> str:
    """The first line of Ray's report on a dead actor, and the one saying why it died: Ray
    prints the whole (a raylet's 20-line dump, say) itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    why = [line for line in lines[1:] if re.search(r"\b(died|dead) because", line)][:1]
    gist = " ".join(lines[:1] + why)
    return gist if len(gist) <= limit else gist[:limit] + "…"


def shared(hydra_context: HydraContext, task_function: TaskFunction) -> list[Any]:
    return [ray.put(hydra_context), ray.put(task_function), ray.put(Singleton.get_state())]


def new_worker(plan: Plan, params: dict[str, Any], launch_dir: str,
               cluster: Cluster) -> RayWorker:
    options: dict[str, Any] = {"num_cpus": params["num_cpus"]}
    if params.get("memory"):
        options["memory"] = params["memory"]
    if plan.python:
        # A runtime_env keeps Ray from using the workers it prestarted: only other interpreters
        # get one. The path is set before the worker starts: unpickling the actor class needs it.
        options["runtime_env"] = {"py_executable": plan.python,
                                  "env_vars": {"PYTHONPATH": os.pathsep.join(plan.python_path)}}
    code_paths = list(params.get("code_paths") or [])
    actor_dir = None if cluster.ship else launch_dir
    where = plan.where or "ray"

    def make(opts: dict[str, Any]) -> Any:
        return JobActor.options(**opts).remote(actor_dir, code_paths)

    if not (plan.node_env or cluster.ship):  # Ray places it: every node has what it needs
        made: Future = Future()
        made.set_result(make(options))
        return RayWorker(made, where)
    if cluster.placer is None:
        cluster.placer = _nodes.Placer(params["num_cpus"])
    worker = RayWorker(Future(), where, cluster.placer)
    worker.actor = _nodes.place(cluster.placer, plan, options, make, worker.pinned)
    return worker
