"""The driver side of `hydra/launcher=wtb_ray`: compose each job once, ask the planner, then
feed the jobs to a pool of local workers and Ray actors (_pool.py). docs/launcher.md tells the
story.

Imported lazily by launcher.py; Ray itself is imported only when a batch needs it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import OmegaConf, open_dict

from ._local import close_all as close_local_workers
from ._pool import Pool, close_workers
from ._run import WorkerDied, completed, failed
from .launcher import WtbRayLauncher
from .plan import Job, Plan
from .progress import Progress, outcome
from .settings import LauncherError, check, local_cpus, slots  # noqa: F401 (API)

log = logging.getLogger(__name__)


class Scheduler:
    """Feeds one batch to the pool; results are taken as they finish, in any order."""

    def __init__(self, pool: Any, params: dict[str, Any], jobs: list[Job],
                 plans: list[Plan], progress: Any) -> None:
        self.pool, self.params, self.jobs, self.plans = pool, params, jobs, plans
        self.results: list[JobReturn | None] = [None] * len(jobs)
        self.todo = deque((i, 0) for i, p in enumerate(plans) if not p.done)  # (job, attempt)
        # future -> (job, attempt, worker, time.monotonic() and time.time() at its start)
        self.running: dict[Future, tuple[int, int, Any, float, float]] = {}
        self.stop_reason: str | None = None
        self.progress = progress

    def run(self) -> list[JobReturn]:
        with self.progress:
            for i, plan in enumerate(self.plans):
                if plan.done:
                    ret = (failed(self.jobs[i].overrides, plan.error) if plan.error is not None
                           else completed(self.jobs[i].overrides, plan.result))
                    self.finish(i, ret, 0.0, plan.where or "planned")
            while self.todo or self.running:
                self.submit()
                if not self.running:
                    if self.todo:  # the jobs left wait for Ray to come up
                        time.sleep(0.05)
                        continue
                    break
                done, _ = wait(list(self.running), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    self.collect(future)
                self.expire()
        assert all(r is not None for r in self.results)
        return self.results  # type: ignore[return-value]

    def finish(self, i: int, ret: JobReturn, seconds: float, where: str) -> None:
        self.results[i] = ret
        self.progress.finished(i, ret, seconds, where)
        if outcome(ret)[0] == "failed" and self.params["fail_fast"] and not self.stop_reason:
            self.stop_reason = f"fail_fast: job #{self.jobs[i].num} failed"

    def _ready(self) -> list[tuple[int, int]]:
        """The jobs that may start now: their leader, if any, has finished."""
        return [item for item in self.todo if self.plans[item[0]].waits_for is None
                or self.results[self.plans[item[0]].waits_for] is not None]

    def _fail_todo(self, error: BaseException) -> None:
        while self.todo:
            i, _ = self.todo.popleft()
            told = self.tell(i, error, False, time.time())
            self.finish(i, self.failure(i, error, told), 0.0, "-")

    def tell(self, i: int, error: BaseException, retrying: bool, since: float) -> bool:
        """The planner records what the job could not (Plan.on_failure); whether it was told
        (one that could not record it says so in the log: the failure is still the job's)."""
        on_failure = self.plans[i].on_failure
        if on_failure is None:
            return False
        try:
            on_failure(error, retrying, since)
        except Exception as e:  # the job's own result still reaches Hydra
            log.error(f"wtb_ray: job #{self.jobs[i].num}: the planner did not take its "
                      f"failure: {type(e).__name__}: {e}")
        return True

    def failure(self, i: int, error: BaseException, told: bool) -> JobReturn:
        """A failure the planner was told of is a result like any other, so that Hydra's
        sweeper goes on (it raises a FAILED job's exception, ending the sweep with a
        traceback); without a planner, Hydra's own way."""
        if told:
            return completed(self.jobs[i].overrides, {
                "status": "failed", "error": f"{type(error).__name__}: {error}",
                "exception": error})
        return failed(self.jobs[i].overrides, error)

    def submit(self) -> None:
        ready = self._ready()
        no_worker: set[str] = set()  # interpreters with no worker to give now
        for item in ready:
            i, attempt = item
            key = self.plans[i].interpreter
            if self.stop_reason is not None or key in no_worker:
                continue
            worker = self._guard(self.pool.acquire, self.plans[i], len(self.jobs))
            if worker is None:  # e.g. Ray is still starting: jobs of other interpreters go on
                no_worker.add(key)
                continue
            self.todo.remove(item)
            future = self.pool.submit(worker, self.jobs[i], self.plans[i])
            self.running[future] = (i, attempt, worker, time.monotonic(), time.time())
            self.progress.started(i, worker.where)
        started = set(ready)
        for i, _ in [item for item in self.todo if item not in started]:
            if self.stop_reason is None:  # it waits for a running job: get a worker ready
                self._guard(self.pool.warm, self.plans[i], len(self.jobs))
        if self.stop_reason is not None:
            self._fail_todo(RuntimeError(f"not run: {self.stop_reason}"))

    def _guard(self, call: Any, *args: Any) -> Any:
        """A pool that cannot give workers (Ray did not start) fails the jobs left."""
        try:
            return call(*args)
        except Exception as e:
            log.error(f"wtb_ray: {e}")
            self.stop_reason = str(e)
            self._fail_todo(e)
            return None

    def collect(self, future: Future) -> None:
        i, attempt, worker, t0, since = self.running.pop(future)
        try:
            ret, seconds = future.result()
            self.pool.release(worker, self.plans[i])
            if ret.status == JobStatus.FAILED:  # it raised: maybe before it could record it
                error = ret._return_value
                ret = self.failure(i, error, self.tell(i, error, False, since))
        except WorkerDied as e:
            self.pool.discard(worker)
            retrying = (e.retry and attempt < self.params["max_retries"]
                        and self.stop_reason is None)  # a stopped batch starts nothing more
            told = self.tell(i, e, retrying, since)
            if retrying:
                log.warning(f"job #{self.jobs[i].num}: {e}; retrying "
                            f"({attempt + 1}/{self.params['max_retries']})")
                self.todo.appendleft((i, attempt + 1))
                self.progress.retrying(i)
                return
            ret, seconds = self.failure(i, e, told), time.monotonic() - t0
        except Exception as e:  # raised outside run_job, e.g. unpickling the task function
            self.pool.release(worker, self.plans[i])
            told = self.tell(i, e, False, since)
            ret, seconds = self.failure(i, e, told), time.monotonic() - t0
        self.finish(i, ret, seconds, worker.where)

    def expire(self) -> None:
        timeout = self.params.get("timeout_s")
        if not timeout:
            return
        now = time.monotonic()
        for future, (i, _, worker, t0, since) in list(self.running.items()):
            if now - t0 > timeout:
                del self.running[future]
                self.pool.discard(worker)
                error = TimeoutError(f"job #{self.jobs[i].num} ran over "
                                     f"hydra.launcher.timeout_s={timeout}; its process was killed")
                told = self.tell(i, error, False, since)
                self.finish(i, self.failure(i, error, told), now - t0, worker.where)


def check_plans(plans: list[Plan], n: int) -> None:
    """A planner's answer that would hang the batch is an error that says what is wrong."""
    if len(plans) != n:
        raise LauncherError(f"hydra.launcher.planner returned {len(plans)} plans for {n} jobs")
    for i, plan in enumerate(plans):
        seen = {i}
        j = plan.waits_for
        while j is not None:
            if not 0 <= j < n:
                raise LauncherError(f"hydra.launcher.planner: job {i} waits for job {j}, which is "
                                 f"not in the batch (0..{n - 1})")
            if j in seen:
                raise LauncherError(f"hydra.launcher.planner: job {i} waits for itself, through "
                                 f"jobs {sorted(seen - {i})}")
            seen.add(j)
            j = plans[j].waits_for


def compose(launcher: WtbRayLauncher, job_overrides: Sequence[Sequence[str]],
            initial_job_idx: int, sweep_dir: Path) -> list[Job]:
    """Each job's config, composed once, here; the workers run it as it is."""
    jobs = []
    for i, overrides in enumerate(job_overrides):
        num = initial_job_idx + i
        config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{num}"
            config.hydra.job.num = num
            config.hydra.sweep.dir = str(sweep_dir)  # one ${now:...} for every job
        jobs.append(Job(num, list(overrides), config))
    return jobs


def launch(launcher: WtbRayLauncher, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> Sequence[JobReturn]:
    assert launcher.config is not None and launcher.hydra_context is not None
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    params = OmegaConf.to_container(OmegaConf.create(launcher.params), resolve=True)
    assert isinstance(params, dict)
    check(params)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"wtb_ray: launching {len(job_overrides)} jobs, sweep output dir: {sweep_dir}")
    for i, overrides in enumerate(job_overrides):
        log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
    jobs = compose(launcher, job_overrides, initial_job_idx, sweep_dir)
    if launcher.pool is None:
        launcher.pool = Pool(launcher, params)
    pool = launcher.pool
    try:
        return _run_batch(launcher, pool, params, jobs, initial_job_idx)
    except BaseException:  # Ctrl-C or an error anywhere in the batch, forking included: the
        # jobs stop (or finish) before whoever records the end, and no worker is left behind
        close_workers(pool.workers, pool.idle)
        close_local_workers(time.monotonic() + 2)
        raise


def _run_batch(launcher: WtbRayLauncher, pool: Pool, params: dict[str, Any], jobs: list[Job],
               initial_job_idx: int) -> list[JobReturn]:
    pool.fork_ahead(len(jobs))
    pool.shared = None  # Hydra's state for the actors, as of this batch
    for path in reversed(pool.code_paths):  # the planner imports what the workers will
        if path not in sys.path:
            sys.path.insert(0, path)
    no_planner = contextlib.nullcontext([Plan() for _ in jobs])
    with launcher.planner(jobs) if launcher.planner else no_planner as plans:
        check_plans(plans, len(jobs))
        if any(not p.done and (p.interpreter or not pool.local) for p in plans):
            pool.start_ray()  # in the background, while local jobs run
        progress = Progress([list(filter_overrides(j.overrides)) for j in jobs],
                            initial_job_idx, params.get("progress"), params["summary"])
        return Scheduler(pool, params, jobs, plans, progress).run()
