"""wtb_ray's Scheduler on a fake pool (no processes, no Ray), and the launcher's param checks.

The fake pool resolves each job's future the moment it is submitted, except for jobs told to
hang (until their worker is discarded) or to finish after another job (when the scheduler has
recorded that job finished): the order of events is set by the test, not by a clock.
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.wtb_conf_launcher._core import Scheduler, check, check_plans, slots
from hydra_plugins.wtb_conf_launcher._run import WorkerDied, completed, failed
from hydra_plugins.wtb_conf_launcher.plan import Job, Plan
from hydra_plugins.wtb_conf_launcher.progress import Progress, outcome

FIRST = 10  # the batch's first hydra.job.num: messages name job numbers, not indexes
COMPLETED, FAILED = JobStatus.COMPLETED, JobStatus.FAILED
ALWAYS = 99  # deaths: the worker dies on every attempt


def value(i: int) -> str:
    return f"value of job {i}"


# per-job behaviours of the fake pool
def ok(result: Any = None) -> tuple:
    return ("ok", result)


def task_fails(error: BaseException) -> tuple:  # run_job caught it: a FAILED JobReturn
    return ("fail", error)


def raises(error: BaseException) -> tuple:  # the future itself raises (not a dead process)
    return ("raise", error)


def dies(times: int) -> tuple:  # WorkerDied on the first `times` attempts, then ok
    return ("die", times)


def hangs() -> tuple:  # never finishes; its worker's death (discard) ends the future
    return ("hang", None)


def after(j: int, then: tuple | None = None) -> tuple:
    """`then` (default: ok), once the scheduler has recorded job j finished."""
    return ("after", (j, then or ok()))


class FakeWorker:
    def __init__(self, n: int) -> None:
        self.where = f"w{n}"

    def __repr__(self) -> str:
        return self.where


class FakePool:
    """At most `size` workers at once; checks that the scheduler uses them as a pool must be
    used (submit only to a worker it acquired, release or discard each busy one once)."""

    def __init__(self, size: int, behaviours: dict[int, tuple] | None = None,
                 acquire_errors: dict[str | None, Exception] | None = None,
                 warm_error: Exception | None = None) -> None:
        self.size, self.behaviours = size, behaviours or {}
        self.acquire_errors = acquire_errors or {}  # plan.python -> what acquire raises
        self.warm_error = warm_error
        self.made = 0
        self.live: list[FakeWorker] = []
        self.idle: list[FakeWorker] = []
        self.busy: set[FakeWorker] = set()  # acquired, not yet released or discarded
        self.submitted: set[FakeWorker] = set()
        self.peak_busy = 0
        self.acquires = self.warms = 0
        self.released: list[FakeWorker] = []
        self.discarded: list[FakeWorker] = []
        self.attempts: Counter[int] = Counter()
        self.runs: list[tuple[int, FakeWorker]] = []  # (job index, worker) per submit
        self.hanging: dict[FakeWorker, Future] = {}
        self.waiting: dict[int, list[tuple]] = defaultdict(list)  # job -> resolve when done
        self.finished: set[int] = set()

    def _make(self) -> FakeWorker:
        worker = FakeWorker(self.made)
        self.made += 1
        self.live.append(worker)
        return worker

    def acquire(self, plan: Plan, limit: int) -> FakeWorker | None:
        self.acquires += 1
        if plan.python in self.acquire_errors:
            raise self.acquire_errors[plan.python]
        if self.idle:
            worker = self.idle.pop()
        elif len(self.live) < min(self.size, limit):
            worker = self._make()
        else:
            return None
        self.busy.add(worker)
        self.peak_busy = max(self.peak_busy, len(self.busy))
        return worker

    def warm(self, plan: Plan, limit: int) -> None:
        self.warms += 1
        if self.warm_error is not None:
            raise self.warm_error
        if len(self.live) < min(self.size, limit) and not self.idle:
            self.idle.append(self._make())

    def release(self, worker: FakeWorker, plan: Plan) -> None:
        assert worker in self.busy, f"released {worker}, which is not busy"
        self.busy.discard(worker)
        self.submitted.discard(worker)
        self.released.append(worker)
        self.idle.append(worker)

    def discard(self, worker: FakeWorker) -> None:
        assert worker in self.live, f"discarded {worker}, which is gone"
        self.live.remove(worker)
        self.busy.discard(worker)
        self.submitted.discard(worker)
        self.discarded.append(worker)
        hanging = self.hanging.pop(worker, None)
        if hanging is not None:  # a killed process: its job's future ends
            hanging.set_exception(WorkerDied(f"{worker.where} was killed"))

    def submit(self, worker: FakeWorker, job: Job, plan: Plan) -> Future:
        assert worker in self.busy and worker not in self.submitted, f"{worker} is not free"
        self.submitted.add(worker)
        i = job.num - FIRST
        attempt = self.attempts[i]
        self.attempts[i] += 1
        self.runs.append((i, worker))
        future: Future = Future()
        self._resolve(future, self.behaviours.get(i, ok()), worker, job, attempt)
        return future

    def _resolve(self, future: Future, behaviour: tuple, worker: FakeWorker, job: Job,
                 attempt: int) -> None:
        kind, arg = behaviour
        if kind == "ok":
            result = value(job.num - FIRST) if arg is None else arg
            future.set_result((completed(job.overrides, result), 0.1))
        elif kind == "fail":
            future.set_result((failed(job.overrides, arg), 0.1))
        elif kind == "raise":
            future.set_exception(arg)
        elif kind == "die":
            if attempt < arg:
                future.set_exception(WorkerDied(f"{worker.where} died running job #{job.num}"))
            else:
                self._resolve(future, ok(), worker, job, attempt)
        elif kind == "hang":
            self.hanging[worker] = future
        elif kind == "after":
            j, then = arg
            if j in self.finished:  # a retry of a job that waited for j
                self._resolve(future, then, worker, job, attempt)
            else:
                self.waiting[j].append((future, then, worker, job, attempt))

    def job_finished(self, j: int) -> None:
        self.finished.add(j)
        for future, then, *run in self.waiting.pop(j, []):
            self._resolve(future, then, *run)

    def workers_of(self, i: int) -> list[FakeWorker]:
        return [w for j, w in self.runs if j == i]


class Recorder:
    """The progress interface, recording what the scheduler reports, in order."""

    def __init__(self, pool: FakePool) -> None:
        self.pool = pool
        self.events: list[tuple] = []
        self.running: set[int] = set()
        self.peak = 0
        self.entered = self.exited = False

    def __enter__(self) -> Recorder:
        self.entered = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.exited = True

    def started(self, i: int, where: str) -> None:
        assert i not in self.running, f"job {i} started twice"
        self.running.add(i)
        self.peak = max(self.peak, len(self.running))
        self.events.append(("started", i, where))

    def retrying(self, i: int) -> None:
        self.running.discard(i)
        self.events.append(("retrying", i))

    def finished(self, i: int, ret: JobReturn, seconds: float, where: str) -> None:
        assert not any(e[:2] == ("finished", i) for e in self.events), f"job {i} finished twice"
        self.running.discard(i)
        self.events.append(("finished", i, where))
        self.pool.job_finished(i)

    def index(self, kind: str, i: int) -> int:
        return next(n for n, e in enumerate(self.events) if e[:2] == (kind, i))

    def of(self, kind: str) -> list[int]:
        return [e[1] for e in self.events if e[0] == kind]


@dataclass
class Outcome:
    results: list[JobReturn]
    pool: FakePool
    progress: Recorder

    @property
    def statuses(self) -> list[JobStatus]:
        """FAILED for a failure the planner recorded too (a COMPLETED JobReturn whose value
        says so, for Hydra's sweeper to go on)."""
        return [FAILED if outcome(r)[0] == "failed" else r.status for r in self.results]

    def error(self, i: int) -> BaseException:
        ret = self.results[i]
        if ret.status == COMPLETED:  # recorded: the same exception, in its value
            assert ret.return_value["status"] == "failed"
            assert ret.return_value["error"] == (f"{type(ret.return_value['exception']).__name__}"
                                                 f": {ret.return_value['exception']}")
            return ret.return_value["exception"]
        assert ret.status == FAILED
        return ret._return_value


def schedule(n: int = 4, size: int = 2, behaviours: dict[int, tuple] | None = None,
             plans: dict[int, Plan] | None = None, pool: FakePool | None = None,
             **params: Any) -> Outcome:
    params = {"max_retries": 1, "fail_fast": False, "timeout_s": None, **params}
    jobs = [Job(FIRST + i, [f"x={i}"], OmegaConf.create({})) for i in range(n)]
    all_plans = [(plans or {}).get(i) or Plan() for i in range(n)]
    pool = pool or FakePool(size, behaviours)
    progress = Recorder(pool)
    results = Scheduler(pool, params, jobs, all_plans, progress).run()
    assert progress.entered and progress.exited
    assert len(results) == n and all(r.overrides == [f"x={i}"] for i, r in enumerate(results))
    assert not pool.busy, f"workers left busy: {pool.busy}"
    # progress saw every start, on the worker the job went to, and every end, where it was
    events = progress.events
    assert [e[1:] for e in events if e[0] == "started"] == [(i, w.where) for i, w in pool.runs]
    assert sorted(progress.of("finished")) == list(range(n))
    for _, i, where in (e for e in events if e[0] == "finished"):
        if progress.of("started").count(i) > progress.of("retrying").count(i):  # it ran
            assert where == pool.workers_of(i)[-1].where
        elif all_plans[i].done:
            assert where == (all_plans[i].where or "planned")
        else:  # not run
            assert where == "-"
    return Outcome(results, pool, progress)


# -- results and planned jobs -----------------------------------------------------------


@pytest.mark.parametrize("finish_order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)])
def test_results_come_back_in_job_order_whatever_the_finish_order(finish_order):
    behaviours = {finish_order[0]: ok()}
    for before, job in zip(finish_order, finish_order[1:], strict=False):
        behaviours[job] = after(before)
    out = schedule(n=4, size=4, behaviours=behaviours)
    assert out.progress.of("finished") == list(finish_order)
    assert out.statuses == [COMPLETED] * 4
    assert [r.return_value for r in out.results] == [value(i) for i in range(4)]


@pytest.mark.parametrize(
    ("plan", "status", "returned", "where"),
    [
        (Plan(done=True, result={"status": "cached", "run_id": "abc"}, where="cache"),
         COMPLETED, {"status": "cached", "run_id": "abc"}, "cache"),
        (Plan(done=True, result={"status": "failed", "error": "bad"}, where="planner"),
         COMPLETED, {"status": "failed", "error": "bad"}, "planner"),
        (Plan(done=True), COMPLETED, None, "planned"),
        (Plan(done=True, error=ValueError("workflow.cases: add a case")), FAILED,
         ValueError("workflow.cases: add a case"), "planned"),
        (Plan(done=True, error=KeyError("env"), where="planner"), FAILED, KeyError("env"),
         "planner"),
    ],
)
def test_a_done_plan_never_reaches_the_pool(plan, status, returned, where):
    out = schedule(n=3, plans={1: plan})
    assert out.results[1].status == status  # as the planner gave it
    got = out.results[1]._return_value
    if isinstance(returned, BaseException):
        assert got is plan.error
    else:
        assert got == returned
    assert ("finished", 1, where) in out.progress.events
    assert 1 not in out.progress.of("started") and out.pool.attempts[1] == 0
    assert out.statuses[0] == out.statuses[2] == COMPLETED  # the others run as usual


def test_a_batch_of_done_plans_asks_the_pool_for_nothing():
    plans = {0: Plan(done=True, result=1), 1: Plan(done=True, error=ValueError("no"))}
    out = schedule(n=2, plans=plans)
    assert out.statuses == [COMPLETED, FAILED]
    assert (out.pool.acquires, out.pool.warms, out.pool.made) == (0, 0, 0)


def test_the_real_progress_shows_each_outcome(capsys):
    jobs = [Job(FIRST + i, [f"x={i}"], OmegaConf.create({})) for i in range(3)]
    pool = FakePool(2, {1: task_fails(ValueError("boom"))})
    progress = Progress([j.overrides for j in jobs], FIRST, live=False, summary=False)
    params = {"max_retries": 1, "fail_fast": False, "timeout_s": None}
    results = Scheduler(pool, params, jobs, [Plan() for _ in jobs], progress).run()
    assert [r.status for r in results] == [COMPLETED, FAILED, COMPLETED]
    assert progress.status == ["completed", "failed", "completed"]
    assert "[wtb_ray] 3/3 job #" in capsys.readouterr().out


# -- order and concurrency --------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "waits_for", "behaviours", "statuses"),
    [
        # the leader finishes last of the jobs that do not wait: job 3 overtakes 1 and 2
        (4, [None, 0, 0, None], {0: after(3)}, "CCCC"),
        (1, [None, 0, 0, None], {}, "CCCC"),
        (2, [None, 0, 1], {}, "CCC"),  # a follower's follower
        (2, [None, 0, None], {0: after(2)}, "CCC"),
        (2, [None, 0], {0: dies(1)}, "CC"),  # the leader's retry still comes first
        (2, [None, 0], {0: task_fails(ValueError("x"))}, "FC"),  # a failed leader frees it
        (2, [None, 0], {0: raises(OSError("pipe"))}, "FC"),
        (3, [1, None, 1, None], {1: after(3)}, "CCCC"),  # a leader after its followers
    ],
)
def test_a_job_never_starts_before_its_leader_finished(size, waits_for, behaviours, statuses):
    plans = {i: Plan(waits_for=w) for i, w in enumerate(waits_for)}
    out = schedule(n=len(waits_for), size=size, behaviours=behaviours, plans=plans)
    assert "".join(s.name[0] for s in out.statuses) == statuses
    for i, leader in enumerate(waits_for):
        if leader is not None:
            first_start = out.progress.index("started", i)
            assert out.progress.index("finished", leader) < first_start, out.progress.events


def test_a_job_whose_leader_was_planned_done_starts_at_once():
    plans = {0: Plan(done=True, result="cached"), 1: Plan(waits_for=0)}
    out = schedule(n=2, plans=plans)
    assert out.statuses == [COMPLETED, COMPLETED]
    assert out.pool.warms == 0 and out.pool.attempts[1] == 1


@pytest.mark.parametrize(("size", "n"), [(1, 3), (2, 5), (3, 3), (4, 2), (3, 7)])
def test_jobs_at_once_fill_but_never_exceed_the_pool(size, n):
    out = schedule(n=n, size=size)
    assert out.statuses == [COMPLETED] * n
    assert out.progress.peak == min(size, n)
    assert out.pool.peak_busy <= size and out.pool.made <= size


# -- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "status", "returned"),
    [
        (ok(5), COMPLETED, 5),
        (task_fails(ValueError("boom at x=2")), FAILED, ValueError),
        # raised outside run_job, e.g. unpickling the task function: no retry
        (raises(RuntimeError("cannot unpickle the task function")), FAILED, RuntimeError),
        (raises(TypeError("bad pickle")), FAILED, TypeError),
    ],
)
def test_a_job_that_ends_without_its_process_dying_frees_its_worker(behaviour, status,
                                                                     returned):
    out = schedule(n=1, behaviours={0: behaviour}, max_retries=3)
    assert out.statuses == [status]
    if status == COMPLETED:
        assert out.results[0].return_value == returned
    else:
        assert type(out.error(0)) is returned and out.error(0) is behaviour[1]
    assert out.pool.attempts[0] == 1 and out.progress.of("retrying") == []
    assert out.pool.released == out.pool.workers_of(0) and out.pool.discarded == []


@pytest.mark.parametrize(
    ("max_retries", "deaths", "status", "attempts"),
    [
        (1, 0, COMPLETED, 1),
        (1, 1, COMPLETED, 2),
        (3, 2, COMPLETED, 3),
        (3, 3, COMPLETED, 4),
        (2, ALWAYS, FAILED, 3),
        (0, 1, FAILED, 1),
    ],
)
def test_a_job_whose_process_dies_is_retried_on_a_new_worker(max_retries, deaths, status,
                                                             attempts):
    out = schedule(n=2, size=1, behaviours={0: dies(deaths)}, max_retries=max_retries)
    assert out.statuses == [status, COMPLETED]
    assert out.pool.attempts[0] == attempts
    workers = out.pool.workers_of(0)
    assert len(set(workers)) == attempts  # each attempt on a worker of its own
    dead = workers[:min(deaths, attempts)]
    assert out.pool.discarded == dead
    assert not set(dead) & set(out.pool.released)
    assert out.progress.of("retrying") == [0] * (attempts - 1)
    if status == FAILED:
        assert isinstance(out.error(0), WorkerDied)
        assert str(out.error(0)) == f"{workers[-1].where} died running job #{FIRST}"


NOT_RUN = "NOT RUN"


@pytest.mark.parametrize(
    ("size", "behaviours", "plans", "fail_fast", "expected", "culprit"),
    [
        (1, {1: task_fails(ValueError("boom"))}, {}, True, ["C", "F", NOT_RUN, NOT_RUN], 1),
        (1, {1: raises(RuntimeError("unpickling"))}, {}, True, ["C", "F", NOT_RUN, NOT_RUN], 1),
        (1, {1: dies(ALWAYS)}, {}, True, ["C", "F", NOT_RUN, NOT_RUN], 1),
        (1, {0: task_fails(ValueError("boom"))}, {}, True, ["F"] + [NOT_RUN] * 3, 0),
        # a job running when another fails finishes; only the ones not started are dropped
        (2, {0: after(1), 1: task_fails(ValueError("boom"))}, {}, True,
         ["C", "F", NOT_RUN, NOT_RUN], 1),
        # the message names the first failure, not a later one
        (2, {0: after(1, task_fails(ValueError("second"))), 1: task_fails(ValueError("first"))},
         {}, True, ["F", "F", NOT_RUN, NOT_RUN], 1),
        # a job the planner failed counts as the first failure
        (2, {}, {2: Plan(done=True, error=ValueError("planned"))}, True,
         [NOT_RUN, NOT_RUN, "F", NOT_RUN], 2),
        (1, {1: task_fails(ValueError("boom"))}, {}, False, ["C", "F", "C", "C"], None),
    ],
)
def test_fail_fast_starts_nothing_after_the_first_failure(size, behaviours, plans, fail_fast,
                                                          expected, culprit):
    out = schedule(n=4, size=size, behaviours=behaviours, plans=plans, fail_fast=fail_fast,
                   max_retries=0)
    got = []
    for i, ret in enumerate(out.results):
        if ret.status == FAILED and str(out.error(i)).startswith("not run"):
            assert type(out.error(i)) is RuntimeError
            assert str(out.error(i)) == f"not run: fail_fast: job #{FIRST + culprit} failed"
            assert i not in out.progress.of("started") and out.pool.attempts[i] == 0
            got.append(NOT_RUN)
        else:
            got.append(ret.status.name[0])
    assert got == expected


@pytest.mark.parametrize(("size", "n"), [(1, 2), (2, 3)])
def test_a_job_over_timeout_s_fails_and_its_worker_is_killed(size, n):
    out = schedule(n=n, size=size, behaviours={0: hangs()}, timeout_s=0.3)
    assert out.statuses == [FAILED] + [COMPLETED] * (n - 1)
    error = out.error(0)
    assert type(error) is TimeoutError
    assert str(error) == (f"job #{FIRST} ran over hydra.launcher.timeout_s=0.3; "
                          "its process was killed")
    (worker,) = out.pool.workers_of(0)
    assert worker in out.pool.discarded and worker not in out.pool.released
    assert out.pool.attempts[0] == 1  # a timeout is not retried as a death


CPUS = ValueError("hydra.launcher.num_cpus=64 but the Ray cluster has 2 CPUs; ask for at most "
                  "that many")


@pytest.mark.parametrize(
    ("plans", "errors", "expected"),
    [
        ({}, {None: CPUS}, ["F", "F", "F"]),
        # the planner's outcome stands; the rest fail with the pool's error
        ({0: Plan(done=True, result="cached")}, {None: CPUS}, ["C", "F", "F"]),
        # a local job starts; the first job that needs Ray fails itself and the rest
        ({1: Plan(python="/envs/a/bin/python")}, {"/envs/a/bin/python": CPUS}, ["C", "F", "F"]),
        ({0: Plan(python="/envs/a/bin/python")},
         {"/envs/a/bin/python": RuntimeError("ray.init failed: no head node")}, ["F", "F", "F"]),
    ],
)
def test_a_pool_that_cannot_give_workers_fails_the_jobs_left(plans, errors, expected):
    out = schedule(n=3, size=1, plans=plans, pool=FakePool(1, acquire_errors=errors))
    assert [s.name[0] for s in out.statuses] == expected
    (error,) = errors.values()
    for i, status in enumerate(expected):
        if status == "F":
            assert out.error(i) is error
            assert i not in out.progress.of("started")


def test_a_death_after_the_pool_broke_is_not_retried():
    # job 0's process dies after job 1 (which needs Ray) found the pool broken: its own
    # death is its error, not a retry that could never start
    python = "/envs/a/bin/python"
    pool = FakePool(2, {0: after(1, dies(1))}, acquire_errors={python: CPUS})
    out = schedule(n=3, plans={1: Plan(python=python)}, pool=pool)
    assert out.statuses == [FAILED] * 3
    assert out.error(1) is CPUS and out.error(2) is CPUS
    assert type(out.error(0)) is WorkerDied
    assert out.pool.attempts[0] == 1 and out.progress.of("retrying") == []


def test_a_pool_that_cannot_warm_a_worker_fails_the_jobs_left():
    error = ValueError("hydra.launcher.num_cpus=64 but the Ray cluster has 2 CPUs")
    pool = FakePool(2, warm_error=error)
    out = schedule(n=2, plans={1: Plan(waits_for=0)}, pool=pool)
    assert out.statuses == [COMPLETED, FAILED]
    assert out.error(1) is error


# -- params -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_actors": 0}, "hydra.launcher.num_actors=0 is out of range: use at least 1 "
                            "(or leave it unset)"),
        ({"num_cpus": 0}, "hydra.launcher.num_cpus=0 is out of range: use at least 0.01"),
        ({"num_cpus": 0.001}, "hydra.launcher.num_cpus=0.001 is out of range: use at least 0.01"),
        ({"num_cpus": -1.0}, "hydra.launcher.num_cpus=-1.0 is out of range: use at least 0.01"),
        ({"max_retries": -1}, "hydra.launcher.max_retries=-1 is out of range: use at least 0"),
        ({"timeout_s": 0}, "hydra.launcher.timeout_s=0 is out of range: use at least 0.001 "
                           "(or leave it unset)"),
        ({"timeout_s": -5}, "hydra.launcher.timeout_s=-5 is out of range: use at least 0.001 "
                            "(or leave it unset)"),
        ({"memory": 0}, "hydra.launcher.memory=0 is out of range: use at least 1 "
                        "(or leave it unset)"),
        ({"num_actors": 2, "max_retries": -3, "timeout_s": None},
         "hydra.launcher.max_retries=-3 is out of range: use at least 0"),
        ({"num_cpus": 3, "init_kwargs": {"num_cpus": 2}},
         "hydra.launcher.num_cpus=3 but the local Ray is given 2 CPUs (hydra.launcher."
         "init_kwargs.num_cpus); ask for at most that many"),
    ],
)
def test_check_names_the_key_its_value_and_the_lowest_valid_one(params, message):
    with pytest.raises(ValueError) as info:
        check(params)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"num_actors": None, "num_cpus": 1.0, "max_retries": 1, "timeout_s": None,
         "memory": None, "fail_fast": False},
        {"num_actors": 1, "num_cpus": 0.01, "max_retries": 0, "timeout_s": 0.001, "memory": 1},
        {"num_actors": 64, "num_cpus": 8, "max_retries": 10, "timeout_s": 3600,
         "memory": 2 ** 30, "address": "auto"},  # a cluster's CPUs are checked once it answers
        {"num_cpus": 8, "init_kwargs": {"num_cpus": 8}},  # the local Ray is given 8
    ],
)
def test_check_passes_params_in_range(params):
    assert check(params) is None


@pytest.mark.parametrize(
    ("cpus", "num_cpus", "expected"),
    [
        (2, 1, 2),
        (2, 0.1, 20),  # not 19: 2 / 0.1 is 19.999999999999996
        (2, 0.3, 6),
        (0.3, 0.1, 3),
        (1, 0.01, 100),
        (3, 0.5, 6),
        (4, 1.5, 2),
        (1, 4, 1),  # always room for one job
        (0, 1, 1),
    ],
)
def test_slots(cpus, num_cpus, expected):
    assert slots(cpus, num_cpus) == expected


class SlowRayPool(FakePool):
    """Workers for the driver's interpreter at once; for another interpreter only after the
    driver's jobs have all finished (Ray still starting until then)."""

    def acquire(self, plan: Plan, limit: int) -> FakeWorker | None:
        if plan.python and len(self.finished) < self.local_jobs:
            self.acquires += 1
            return None
        return super().acquire(plan, limit)


def test_jobs_of_the_drivers_interpreter_do_not_wait_behind_one_that_waits_for_ray():
    pool = SlowRayPool(2)
    pool.local_jobs = 3
    out = schedule(n=4, plans={0: Plan(python="/envs/a/bin/python")}, pool=pool)
    assert out.statuses == [COMPLETED] * 4
    assert [i for i, _ in pool.runs] == [1, 2, 3, 0]  # job 0 ran once Ray was up


@pytest.mark.parametrize(
    ("waits", "message"),
    [({0: 0}, "job 0 waits for itself, through jobs []"),
     ({0: 1, 1: 0}, "job 0 waits for itself, through jobs [1]"),
     ({2: 5}, "job 2 waits for job 5, which is not in the batch (0..2)"),
     ({1: -1}, "job 1 waits for job -1, which is not in the batch (0..2)")],
)
def test_a_planner_s_waits_that_would_hang_are_an_error(waits, message):
    plans = [Plan(waits_for=waits.get(i)) for i in range(3)]
    with pytest.raises(ValueError, match=re.escape(f"hydra.launcher.planner: {message}")):
        check_plans(plans, 3)


def test_a_planner_must_plan_every_job():
    with pytest.raises(ValueError, match="returned 2 plans for 3 jobs"):
        check_plans([Plan(), Plan()], 3)
    check_plans([Plan(), Plan(waits_for=0), Plan(waits_for=1)], 3)  # a chain is fine


# -- Plan.on_failure: the planner is told what the job could not record ------------------


class Told:
    """Plan.on_failure for every job of a batch: each call in order, as (job, error,
    retrying, since). `raises`: what every call raises once recorded (a planner whose store
    is locked, say)."""

    def __init__(self, raises: Exception | None = None) -> None:
        self.calls: list[tuple[int, BaseException, bool, float]] = []
        self.at: list[float] = []  # time.time() of each call
        self.raises = raises
        self.began = time.time()

    def plans(self, n: int, plans: dict[int, Plan] | None = None) -> dict[int, Plan]:
        return {i: replace((plans or {}).get(i) or Plan(),
                           on_failure=functools.partial(self._told, i)) for i in range(n)}

    def _told(self, i: int, error: BaseException, retrying: bool, since: float) -> None:
        self.at.append(time.time())
        assert type(retrying) is bool and self.began <= since <= self.at[-1]
        if isinstance(error, TimeoutError):  # the attempt's start, not the time it expired
            assert self.at[-1] - since >= 0.3 - 0.01
        self.calls.append((i, error, retrying, since))
        if self.raises is not None:
            raise self.raises

    def of(self, i: int) -> list[tuple[str, bool]]:
        """What job i was told, as ("Type: message", retrying)."""
        return [(f"{type(e).__name__}: {e}", r) for j, e, r, _ in self.calls if j == i]


def attempts(*behaviours: tuple) -> tuple:
    """A behaviour per attempt (the last one repeats)."""
    return ("seq", list(behaviours))


def exits(code: int = 3) -> tuple:  # the job ended its own process: running it again won't help
    return raises(WorkerDied(f"the worker exited by itself (exit code {code})", retry=False))


class ClockedPool(FakePool):
    """A FakePool that notes time.time() as each attempt is submitted, and runs `attempts`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.submitted_at: dict[tuple[int, int], float] = {}  # (job, attempt) -> time.time()

    def submit(self, worker: FakeWorker, job: Job, plan: Plan) -> Future:
        i = job.num - FIRST
        self.submitted_at[i, self.attempts[i]] = time.time()
        return super().submit(worker, job, plan)

    def _resolve(self, future: Future, behaviour: tuple, worker: FakeWorker, job: Job,
                 attempt: int) -> None:
        kind, arg = behaviour
        if kind == "seq":
            behaviour = arg[min(attempt, len(arg) - 1)]
        super()._resolve(future, behaviour, worker, job, attempt)


def tell_schedule(n: int = 4, size: int = 2, behaviours: dict[int, tuple] | None = None,
                  plans: dict[int, Plan] | None = None, told: Told | None = None,
                  pool: ClockedPool | None = None, **params: Any) -> tuple[Outcome, Told]:
    told = told or Told()
    pool = pool or ClockedPool(size, behaviours)
    out = schedule(n=n, size=size, plans=told.plans(n, plans), pool=pool, **params)
    # every call after the first of a job is a later attempt, or its end: never two ends
    for i in range(n):
        retrying = [r for _, r in told.of(i)]
        assert False not in retrying[:-1], f"job {i} was told it ended, then more: {retrying}"
    return out, told


def assert_since_is_the_attempts_start(out: Outcome, told: Told, i: int) -> None:
    """Each call for job i that ran carries time.time() of the start of its own attempt."""
    starts = [at for (j, _), at in sorted(out.pool.submitted_at.items()) if j == i]
    sinces = [since for j, _, _, since in told.calls if j == i]
    for k, since in enumerate(sinces[:len(starts)]):
        assert starts[k] <= since, (k, starts, sinces)
        if k + 1 < len(starts):
            assert since <= starts[k + 1], (k, starts, sinces)


TIMEOUT = f"TimeoutError: job #{FIRST} ran over hydra.launcher.timeout_s=0.3; its process was " \
          "killed"


@pytest.mark.parametrize(
    ("size", "behaviours", "max_retries", "expected"),
    [
        # its worker never produced a result; the kill that ends its future is not news
        (1, {0: hangs()}, 0, [(TIMEOUT, False)]),
        # a timeout is not retried, even with retries left
        (2, {0: hangs()}, 3, [(TIMEOUT, False)]),
        # a retry that times out: the planner hears of both attempts, the last one final
        (2, {0: attempts(dies(1), hangs())}, 2,
         [(f"WorkerDied: w0 died running job #{FIRST}", True), (TIMEOUT, False)]),
    ],
)
def test_a_job_over_timeout_s_is_told_once_not_retrying(size, behaviours, max_retries,
                                                        expected):
    out, told = tell_schedule(n=2, size=size, behaviours=behaviours, timeout_s=0.3,
                              max_retries=max_retries)
    assert out.statuses == [FAILED, COMPLETED]
    assert told.of(0) == expected and told.of(1) == []
    (_, error, _, _), = [c for c in told.calls if c[2] is False]
    assert type(error) is TimeoutError and "hydra.launcher.timeout_s=0.3" in str(error)
    assert out.error(0) is error  # the planner hears what Hydra gets
    assert_since_is_the_attempts_start(out, told, 0)


def test_jobs_timing_out_together_are_told_each_of_their_own():
    out, told = tell_schedule(n=3, size=3, behaviours={0: hangs(), 2: hangs()}, timeout_s=0.3)
    assert out.statuses == [FAILED, COMPLETED, FAILED]
    assert told.of(0) == [(TIMEOUT, False)] and told.of(1) == []
    assert told.of(2) == [(TIMEOUT.replace(f"#{FIRST}", f"#{FIRST + 2}"), False)]
    for i in (0, 2):
        assert_since_is_the_attempts_start(out, told, i)


@pytest.mark.parametrize(
    ("max_retries", "deaths", "retrying", "status"),
    [
        (1, 1, [True], COMPLETED),
        (3, 2, [True, True], COMPLETED),
        (3, 3, [True, True, True], COMPLETED),  # the last retry left made it
        (2, ALWAYS, [True, True, False], FAILED),
        (1, ALWAYS, [True, False], FAILED),
        (0, 1, [False], FAILED),
        (0, ALWAYS, [False], FAILED),
    ],
)
def test_each_death_is_told_retrying_while_retries_remain(max_retries, deaths, retrying,
                                                          status):
    out, told = tell_schedule(n=2, size=1, behaviours={0: dies(deaths)},
                              max_retries=max_retries)
    assert out.statuses == [status, COMPLETED]
    workers = out.pool.workers_of(0)
    assert told.of(0) == [(f"WorkerDied: {w.where} died running job #{FIRST}", r)
                          for w, r in zip(workers, retrying, strict=False)]
    assert len(told.of(0)) == len(retrying) and told.of(1) == []
    if status == FAILED:  # the last call's error is the job's
        assert told.calls[-1][1] is out.error(0)
    assert_since_is_the_attempts_start(out, told, 0)


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_a_worker_that_exited_by_itself_is_not_retried(max_retries):
    out, told = tell_schedule(n=2, size=1, behaviours={0: exits()}, max_retries=max_retries)
    assert out.statuses == [FAILED, COMPLETED]
    assert out.pool.attempts[0] == 1 and out.progress.of("retrying") == []
    assert told.of(0) == [("WorkerDied: the worker exited by itself (exit code 3)", False)]
    assert told.calls[0][1] is out.error(0)
    assert out.pool.discarded == out.pool.workers_of(0)  # its process is gone all the same


def test_a_retry_that_exits_by_itself_ends_the_retries():
    out, told = tell_schedule(n=1, size=1, behaviours={0: attempts(dies(1), exits())},
                              max_retries=3)
    assert out.statuses == [FAILED] and out.pool.attempts[0] == 2
    assert told.of(0) == [(f"WorkerDied: w0 died running job #{FIRST}", True),
                          ("WorkerDied: the worker exited by itself (exit code 3)", False)]
    assert_since_is_the_attempts_start(out, told, 0)


POOL_BROKE = f"ValueError: {CPUS}"
WARM = ValueError("the Ray cluster has 2 CPUs")


def not_run(culprit: int) -> tuple[str, bool]:
    return (f"RuntimeError: not run: fail_fast: job #{FIRST + culprit} failed", False)


@pytest.mark.parametrize(
    ("behaviours", "plans", "params", "broken", "expected"),
    [
        # fail_fast: the job that raised is told (it may have raised before recording a
        # run), and so are the ones never started
        ({1: task_fails(ValueError("boom"))}, {}, {"fail_fast": True}, {},
         {1: [("ValueError: boom", False)], 2: [not_run(1)], 3: [not_run(1)]}),
        ({1: dies(ALWAYS)}, {}, {"fail_fast": True, "max_retries": 0}, {},
         {1: [(f"WorkerDied: w0 died running job #{FIRST + 1}", False)],
          2: [not_run(1)], 3: [not_run(1)]}),
        ({1: hangs()}, {}, {"fail_fast": True, "timeout_s": 0.3}, {},
         {1: [(TIMEOUT.replace(f"#{FIRST}", f"#{FIRST + 1}"), False)],
          2: [not_run(1)], 3: [not_run(1)]}),
        # a job the planner failed stops the batch too; it is not told of its own failure
        ({}, {0: Plan(done=True, error=ValueError("planned"))}, {"fail_fast": True}, {},
         {1: [not_run(0)], 2: [not_run(0)], 3: [not_run(0)]}),
        # a pool that cannot give workers: the jobs left are told its error
        ({}, {}, {}, {"acquire_errors": {None: CPUS}},
         {i: [(POOL_BROKE, False)] for i in range(4)}),
        ({}, {1: Plan(waits_for=0)}, {}, {"warm_error": WARM},
         {i: [(f"ValueError: {WARM}", False)] for i in (1, 2, 3)}),
        # a death once the pool broke is not retried: told so, once
        ({0: after(1, dies(1))}, {1: Plan(python="/envs/a/bin/python")}, {"size": 2},
         {"acquire_errors": {"/envs/a/bin/python": CPUS}},
         {0: [(f"WorkerDied: w0 died running job #{FIRST}", False)],
          1: [(POOL_BROKE, False)], 2: [(POOL_BROKE, False)], 3: [(POOL_BROKE, False)]}),
    ],
)
def test_jobs_never_started_are_told_why(behaviours, plans, params, broken, expected):
    params = {"size": 1, "max_retries": 1, **params}
    pool = ClockedPool(params["size"], behaviours, **broken)
    out, told = tell_schedule(n=4, plans=plans, pool=pool, **params)
    assert {i: told.of(i) for i in range(4) if told.of(i)} == expected
    for i, calls in expected.items():
        last = [e for j, e, _, _ in told.calls if j == i][-1]
        assert out.error(i) is last  # what the planner is told is what Hydra gets
        if not calls[-1][0].startswith(("WorkerDied", "TimeoutError", "ValueError: boom")):
            assert out.pool.attempts[i] == len(calls) - 1  # never started (again)


def test_jobs_done_by_the_planner_or_completed_are_not_told():
    plans = {2: Plan(done=True, error=ValueError("planned")), 3: Plan(done=True, result=1)}
    behaviours = {0: ok(), 1: task_fails(ValueError("boom")), 4: dies(1)}
    out, told = tell_schedule(n=5, size=2, behaviours=behaviours, plans=plans)
    assert out.statuses == [COMPLETED, FAILED, FAILED, COMPLETED, COMPLETED]
    # the raising job (it may have raised before recording), and the death a retry made good
    assert [i for i, *_ in told.calls] == [1, 4]


SCENARIOS = {
    "timeout": ({0: hangs()}, {}, {"timeout_s": 0.3}),
    "death, retried": ({0: dies(1)}, {}, {"max_retries": 1}),
    "death, last": ({0: dies(ALWAYS)}, {}, {"max_retries": 1}),
    "exit": ({0: exits()}, {}, {"max_retries": 2}),
    "raised outside run_job": ({0: raises(RuntimeError("cannot unpickle"))}, {}, {}),
    "fail_fast": ({0: task_fails(ValueError("boom"))}, {}, {"fail_fast": True}),
    "fail_fast after a timeout": ({0: hangs()}, {}, {"fail_fast": True, "timeout_s": 0.3}),
    "pool error": ({}, {1: Plan(python="/envs/a/bin/python")}, {}),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_an_on_failure_that_raises_does_not_change_the_batch(scenario, caplog):
    behaviours, plans, params = SCENARIOS[scenario]

    def run(told: Told) -> tuple[Outcome, Told]:
        pool = ClockedPool(1, behaviours, acquire_errors={"/envs/a/bin/python": CPUS})
        return tell_schedule(n=3, size=1, plans=dict(plans), told=told, pool=pool, **params)

    quiet, heard = run(Told())
    caplog.clear()
    out, told = run(Told(raises=OSError("database is locked")))
    assert heard.calls, "the scenario tells the planner nothing"
    # the same calls, and each job's JobReturn reaches the caller as without the raise
    assert [told.of(i) for i in range(3)] == [heard.of(i) for i in range(3)]
    assert out.statuses == quiet.statuses
    for i, ret in enumerate(out.results):
        if out.statuses[i] == FAILED:
            assert f"{type(out.error(i))}: {out.error(i)}" == \
                   f"{type(quiet.error(i))}: {quiet.error(i)}"
        else:
            assert ret.return_value == quiet.results[i].return_value
    assert out.pool.attempts == quiet.pool.attempts
    logged = [r.getMessage() for r in caplog.records
              if "the planner did not take its failure" in r.getMessage()]
    assert logged == [f"wtb_ray: job #{FIRST + i}: the planner did not take its failure: "
                      "OSError: database is locked" for i, *_ in told.calls]
