"""One job, in whatever process it lands: the same steps as Hydra's basic launcher, on a
config the driver composed. Shared by the local workers and the Ray actors."""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from . import plan


class WorkerDied(Exception):
    """The process running a job ended under it (OOM kill, os._exit, a lost node).
    `retry`: whether running the job again may help (a kill may; an exit the job chose
    itself would happen again)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def enter(launch_dir: str, code_paths: list[str]) -> None:
    """User code must import whatever the worker's cwd: the launch dir comes first."""
    for path in reversed([launch_dir, *code_paths]):
        if path not in sys.path:
            sys.path.insert(0, path)
    if os.path.isdir(launch_dir):
        os.chdir(launch_dir)


def execute(task_function: TaskFunction, hydra_context: HydraContext, config: DictConfig,
            env_vars: dict[str, str], handoff: Any = None) -> tuple[JobReturn, float]:
    started = time.perf_counter()
    setup_globals()
    saved = {k: os.environ.get(k) for k in env_vars}
    os.environ.update(env_vars)
    try:
        with plan.handing(handoff):
            ret = run_job(hydra_context=hydra_context, config=config,
                          task_function=task_function, job_dir_key="hydra.sweep.dir",
                          job_subdir_key="hydra.sweep.subdir")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if ret.status == JobStatus.FAILED:
        try:
            pickle.loads(pickle.dumps(ret._return_value))
        except Exception:  # an exception that cannot be shipped back: keep its text
            exc = ret._return_value
            ret.return_value = RuntimeError(
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return ret, time.perf_counter() - started


def failed(overrides: list[str], error: BaseException) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = error
    return ret


def completed(overrides: list[str], value: Any) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = value
    return ret
