"""The Ray side of `hydra/launcher=wtb_ray`: an actor pool that runs Hydra jobs with `run_job`.

Imported lazily by launcher.py, so Ray costs nothing to Hydra apps that do not launch with it.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ray
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from ray.exceptions import RayActorError, RayTaskError

from ._envs import Interpreter, interpreters
from ._prefixes import leaders
from .launcher import WtbRayLauncher
from .progress import Progress

log = logging.getLogger(__name__)

RAY_START_TIMEOUT_S = 180  # ray.init is ~2-5 s here; past this something is wrong, say so


def _init_ray(params: dict[str, Any]) -> None:
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if params.get("address"):
        kwargs["address"] = params["address"]
    kwargs.update(params.get("init_kwargs") or {})
    ray.init(**kwargs)


def start_ray_in_background(launcher: WtbRayLauncher) -> None:
    """Start (or join) Ray on a thread while the sweeper composes and validates the jobs."""
    if launcher.ray_ready is not None:
        return
    ready: Future = Future()
    launcher.ray_ready = ready
    params = OmegaConf.to_container(OmegaConf.create(launcher.params), resolve=True)

    def target() -> None:
        try:
            _init_ray(params)
            ready.set_result(None)
        except BaseException as e:  # reported from launch(), on the main thread
            ready.set_exception(e)
            return
        # Stay alive: Ray ties the processes it starts (GCS, raylet) to the *thread* that
        # started them (PR_SET_PDEATHSIG), so this thread ending would kill the cluster.
        threading.Event().wait()

    threading.Thread(target=target, name="wtb-ray-init", daemon=True).start()


@ray.remote
class JobActor:
    """One pool member: runs jobs one at a time, as Hydra's basic launcher would in-process."""

    def __init__(self, launch_dir: str, code_paths: list[str]) -> None:
        # User code must import whatever the worker's cwd: the launch dir comes first.
        for path in reversed([launch_dir, *code_paths]):
            if path not in sys.path:
                sys.path.insert(0, path)
        if os.path.isdir(launch_dir):
            os.chdir(launch_dir)

    def run(
        self,
        idx: int,
        overrides: Sequence[str],
        hydra_context: HydraContext,
        config: DictConfig,
        task_function: TaskFunction,
        singleton_state: dict[Any, Any],
    ) -> tuple[JobReturn, float]:
        started = time.perf_counter()
        setup_globals()
        Singleton.set_state(singleton_state)
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        ret = run_job(
            hydra_context=hydra_context,
            config=sweep_config,
            task_function=task_function,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        if ret.status == JobStatus.FAILED:
            try:
                pickle.dumps(ret._return_value)
            except Exception:  # an exception Ray cannot ship back: keep its text
                exc = ret._return_value
                ret._return_value = RuntimeError(
                    "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                )
        return ret, time.perf_counter() - started


def _failed(overrides: Sequence[str], error: BaseException) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret._return_value = error
    return ret


def _check(params: dict[str, Any]) -> None:
    """Ranges the structured config's types cannot express; errors name the key."""
    limits = {"num_actors": 1, "num_cpus": 0.01, "max_retries": 0, "timeout_s": 0.001,
              "memory": 1}
    for key, low in limits.items():
        value = params.get(key)
        if value is not None and value < low:
            unset = " (or leave it unset)" if key in ("num_actors", "memory", "timeout_s") else ""
            raise ValueError(f"hydra.launcher.{key}={value} is out of range: use at least {low}"
                             + unset)


class ActorPool:
    """Actors started on demand, up to `size` in all, per interpreter ("" is the driver's own);
    replaced when they die or time out, and moved between interpreters as jobs need them."""

    def __init__(self, params: dict[str, Any], launch_dir: str) -> None:
        self.params = params
        self.launch_dir = launch_dir
        self.idle: dict[str, list[Any]] = {}
        self.count = 0
        _check(params)
        cpus = ray.cluster_resources().get("CPU", 0)
        if params["num_cpus"] > cpus:  # Ray would wait forever for an infeasible actor
            raise ValueError(
                f"hydra.launcher.num_cpus={params['num_cpus']} but the Ray cluster has {cpus} "
                "CPUs; ask for at most that many"
            )
        self.size = params.get("num_actors") or max(1, int(cpus // params["num_cpus"]))

    def new_actor(self, interp: Interpreter) -> Any:
        options: dict[str, Any] = {"num_cpus": self.params["num_cpus"]}
        # Workers of a cluster started elsewhere do not inherit the driver's environment; the
        # bench's own variables (WTB_*, e.g. the sweep id) must reach the jobs all the same.
        env = {k: v for k, v in os.environ.items() if k.startswith("WTB_")}
        paths = [str(Path(p).absolute()) for p in self.params.get("code_paths") or []]
        runtime_env: dict[str, Any] = {}
        if interp.env_id:
            env["WTB_ENV_ID"] = interp.env_id
            # On the path before the worker starts: unpickling this very actor class needs it.
            env["PYTHONPATH"] = interp.bench_path
            runtime_env["py_executable"] = interp.python
        if env:
            runtime_env["env_vars"] = env
        if runtime_env:
            options["runtime_env"] = runtime_env
        if self.params.get("memory"):
            options["memory"] = self.params["memory"]
        self.count += 1
        return JobActor.options(**options).remote(self.launch_dir, paths)

    def acquire(self, interp: Interpreter, limit: int) -> Any | None:
        if self.idle.get(interp.key):
            return self.idle[interp.key].pop()
        if self.count < min(self.size, limit):
            return self.new_actor(interp)
        for actors in self.idle.values():  # the pool is full: move an idle actor's CPU here
            if actors:
                self.discard(actors.pop())
                return self.new_actor(interp)
        return None

    def warm(self, interp: Interpreter, limit: int) -> None:
        """Start an actor for a job that cannot start yet, so it is up when the job can."""
        if self.count < min(self.size, limit) and not self.idle.get(interp.key):
            self.release(self.new_actor(interp), interp)

    def release(self, actor: Any, interp: Interpreter) -> None:
        self.idle.setdefault(interp.key, []).append(actor)

    def discard(self, actor: Any) -> None:
        self.count -= 1
        ray.kill(actor, no_restart=True)


class Scheduler:
    """Feeds one batch of jobs to the pool; results are taken as they finish, in any order."""

    def __init__(self, launcher: WtbRayLauncher, pool: ActorPool, params: dict[str, Any],
                 job_overrides: Sequence[Sequence[str]], first_num: int,
                 interps: list[Interpreter], waits_for: list[int | None]) -> None:
        self.pool, self.params, self.jobs, self.first_num = pool, params, job_overrides, first_num
        self.interps = interps
        self.waits_for = waits_for  # job -> the job that must finish before it starts
        # Shipped once per batch, not once per job.
        self.shared = [ray.put(launcher.hydra_context), ray.put(launcher.config),
                       ray.put(launcher.task_function), ray.put(Singleton.get_state())]
        self.results: list[JobReturn | None] = [None] * len(job_overrides)
        self.todo = deque((i, 0) for i in range(len(job_overrides)))  # (job index, attempt)
        self.running: dict[Any, tuple[int, int, Any, float]] = {}  # ref -> (i, attempt, actor, t0)
        self.stop_reason: str | None = None
        self.progress = Progress([list(filter_overrides(o)) for o in job_overrides], first_num,
                                 params.get("progress"))

    def run(self) -> list[JobReturn]:
        with self.progress:
            while self.todo or self.running:
                self.submit()
                if not self.running:
                    break
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=0.5)
                for ref in ready:
                    self.collect(ref)
                self.expire()
        assert all(r is not None for r in self.results)
        return self.results  # type: ignore[return-value]

    def finish(self, i: int, ret: JobReturn, seconds: float) -> None:
        self.results[i] = ret
        self.progress.finished(i, ret, seconds)
        if ret.status == JobStatus.FAILED and self.params["fail_fast"] and not self.stop_reason:
            self.stop_reason = f"fail_fast: job #{self.first_num + i} failed"

    def _next(self) -> tuple[int, int] | None:
        for item in self.todo:
            leader = self.waits_for[item[0]]
            if leader is None or self.results[leader] is not None:
                return item
        return None

    def submit(self) -> None:
        while self.todo and self.stop_reason is None:
            item = self._next()
            if item is None:  # every job left waits for a running one: get actors ready
                for i, _ in self.todo:
                    self.pool.warm(self.interps[i], limit=len(self.jobs))
                return
            i, attempt = item
            actor = self.pool.acquire(self.interps[i], limit=len(self.jobs))
            if actor is None:
                return
            self.todo.remove(item)
            ref = actor.run.remote(self.first_num + i, self.jobs[i], *self.shared)
            self.running[ref] = (i, attempt, actor, time.monotonic())
            self.progress.started(i)
        while self.todo:  # stopped by fail_fast
            i, _ = self.todo.popleft()
            self.finish(i, _failed(self.jobs[i], RuntimeError(f"not run: {self.stop_reason}")), 0)

    def collect(self, ref: Any) -> None:
        i, attempt, actor, t0 = self.running.pop(ref)
        try:
            ret, seconds = ray.get(ref)
            self.pool.release(actor, self.interps[i])
        except RayActorError as e:  # the worker process died: OOM kill, os._exit, lost node
            self.pool.discard(actor)
            if attempt < self.params["max_retries"]:
                log.warning(f"job #{self.first_num + i}: its actor died; retrying "
                            f"({attempt + 1}/{self.params['max_retries']})")
                self.todo.appendleft((i, attempt + 1))
                self.progress.retrying(i)
                return
            ret, seconds = _failed(self.jobs[i], e), time.monotonic() - t0
        except RayTaskError as e:  # raised outside run_job, e.g. while composing the config
            self.pool.release(actor, self.interps[i])
            ret, seconds = _failed(self.jobs[i], e.as_instanceof_cause()), time.monotonic() - t0
        self.finish(i, ret, seconds)

    def expire(self) -> None:
        timeout = self.params.get("timeout_s")
        if not timeout:
            return
        now = time.monotonic()
        for ref, (i, _, actor, t0) in list(self.running.items()):
            if now - t0 > timeout:
                del self.running[ref]
                self.pool.discard(actor)
                error = TimeoutError(f"job #{self.first_num + i} ran over "
                                     f"hydra.launcher.timeout_s={timeout}; its actor was killed")
                self.finish(i, _failed(self.jobs[i], error), now - t0)


def launch(
    launcher: WtbRayLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    assert launcher.config is not None and launcher.hydra_context is not None
    assert launcher.task_function is not None
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    params = OmegaConf.to_container(OmegaConf.create(launcher.params), resolve=True)
    assert isinstance(params, dict)
    # Resolving the sweep dir here caches ${now:...} in the config the actors get, so every
    # job lands in the same sweep dir.
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"wtb_ray: launching {len(job_overrides)} jobs, sweep output dir: {sweep_dir}")
    for i, overrides in enumerate(job_overrides):
        log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
    waits_for = leaders(launcher, job_overrides)  # shared prefixes: docs/launcher.md
    with interpreters(launcher, params, job_overrides, initial_job_idx) as interps:
        try:
            launcher.ray_ready.result(timeout=RAY_START_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(
                f"Ray did not start within {RAY_START_TIMEOUT_S} s "
                f"(hydra.launcher.address={params.get('address')!r}); is the cluster reachable?"
            ) from None
        if launcher.pool is None:
            launcher.pool = ActorPool(params, os.getcwd())
        return Scheduler(launcher, launcher.pool, params, job_overrides, initial_job_idx,
                         interps, waits_for).run()
