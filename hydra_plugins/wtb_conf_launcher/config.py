"""`hydra/launcher=wtb_ray`: a sweep's jobs on a pool of Ray actors. See docs/launcher.md."""

# No `from __future__ import annotations`: OmegaConf reads these annotations as types, and
# Hydra imports this module outside sys.modules while scanning plugins.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class WtbRayLauncherConf:
    _target_: str = "hydra_plugins.wtb_conf_launcher.launcher.WtbRayLauncher"
    # unset: start a local Ray for this sweep; "auto" or "ray://host:10001": join that cluster
    address: str | None = None
    # actors in the pool, reused across jobs; unset: as many as fit the CPUs Ray sees
    num_actors: int | None = None
    # CPUs each actor (so each running job) reserves
    num_cpus: float = 1.0
    # bytes of memory each actor reserves; unset: no reservation
    memory: int | None = None
    # how often a job is retried when its actor dies (OOM kill, os._exit, lost node)
    max_retries: int = 1
    # seconds a job may run before its actor is killed and the job recorded failed; unset: none
    timeout_s: float | None = None
    # after the first failed job, launch no more (jobs already running finish)
    fail_fast: bool = False
    # live progress view; unset: on when stdout is a terminal, plain lines otherwise
    progress: bool | None = None
    # directories put on the actors' sys.path, after the launch directory (always first)
    code_paths: list[str] = field(default_factory=list)
    # extra keyword arguments for ray.init, e.g. {include_dashboard: true}
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    # venv manager for jobs whose `env` asks for packages: "host:port"; unset: start one here
    venv_manager: str | None = None
    # token of that venv manager (sent as `authorization: Bearer ...`)
    venv_manager_token: str | None = None
    # where an embedded venv manager keeps its envs and audit db (relative: launch dir)
    venv_data: str = "data/venv_manager"


ConfigStore.instance().store(
    group="hydra/launcher", name="wtb_ray", node=WtbRayLauncherConf, provider="wtb_conf"
)
