from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class WtbRayLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        # Hydra instantiates nested `_target_` nodes with the launcher: this is the object
        self.planner = params.pop("planner", None)
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.pool: Any = None  # _core.Pool, made on the first launch

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from . import _core  # here, not at module load: Hydra imports every plugin at start

        return _core.launch(self, job_overrides, initial_job_idx)
