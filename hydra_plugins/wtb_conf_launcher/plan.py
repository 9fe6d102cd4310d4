"""The planner hook, `hydra.launcher.planner`: what a planner gets and what it returns.

A planner is any callable made by `hydra.utils.instantiate(hydra.launcher.planner)`, once per
sweep. Called with a batch's jobs, it returns a context manager that yields one `Plan` per
job; the launcher runs the batch inside it (so a planner can keep a service up meanwhile):

    @contextlib.contextmanager
    def __call__(self, jobs: list[Job]) -> Iterator[list[Plan]]: ...

Without a planner every job runs, in the driver's interpreter, as soon as a worker is free.
"""

# No `from __future__ import annotations`: Hydra imports this module outside sys.modules
# while scanning plugins, and dataclasses cannot resolve string annotations there.
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig


@dataclass
class Job:
    num: int  # hydra.job.num
    overrides: list[str]
    config: DictConfig  # composed once, in the driver, `hydra` node included; read-only


@dataclass
class NodeEnv:
    """An interpreter found or built on whichever node the job's actor lands (a cluster joined
    by address), not a path made here: `provide()` runs there, once per `key` per node, in
    that node's agent (its own Python, with the launcher importable), and returns
    (python, python_path, env_vars) for the actor. Pickled: a module-level function or a
    functools.partial of one."""

    key: str  # names the interpreter: equal keys, equal interpreters
    provide: Callable[[], tuple[str, list[str], dict[str, str]]]


@dataclass
class Plan:
    # the job is done without running: `result` is its return value, or `error` its failure
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    # the interpreter to run it in (another venv's python); None: the driver's own
    python: str | None = None
    # directories that interpreter needs on its path to unpickle the task function
    python_path: list[str] = field(default_factory=list)
    # instead of `python`: an interpreter provided on the node the job's actor lands
    node_env: NodeEnv | None = None
    # set in the worker's environment while the job runs
    env_vars: dict[str, str] = field(default_factory=dict)
    # index in the batch of a job that must finish before this one starts
    waits_for: int | None = None
    # a short label for progress (e.g. the env's name); default: "local" or the Ray node
    where: str | None = None
    # told of a failure the job could not record itself, as (error, retrying, since): it timed
    # out, its worker died, or it never started; `since`: time.time() when that attempt began.
    # A failure it is told of is the job's result, {"status": "failed", "error": ...},
    # a COMPLETED JobReturn: Hydra's sweeper ends the sweep with a traceback on a FAILED one.
    on_failure: Callable[[BaseException, bool, float], None] | None = None
    # handed to the task function where the job runs, as `handoff()` there (picklable): what
    # the planner made of the job, so that the job need not make it again
    handoff: Any = None

    @property
    def interpreter(self) -> str:
        """Which workers can run the job: "" is the driver's interpreter."""
        return self.python or (f"node-env:{self.node_env.key}" if self.node_env else "")


_handed: list[Any] = [None]  # the running job's Plan.handoff, in its worker


def handoff() -> Any:
    """In a job's worker, while its task function runs: its plan's `handoff` (None without a
    planner, or under another launcher)."""
    return _handed[0]


@contextlib.contextmanager
def handing(value: Any) -> Iterator[None]:
    """The launcher's side of handoff(): `value` is the running job's."""
    _handed[0] = value
    try:
        yield
    finally:
        _handed[0] = None
