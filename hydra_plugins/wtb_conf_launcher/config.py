"""`hydra/launcher=wtb_ray`: a sweep's jobs in forked local workers and on Ray actors.
See docs/launcher.md."""

# No `from __future__ import annotations`: OmegaConf reads these annotations as types, and
# Hydra imports this module outside sys.modules while scanning plugins.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class WtbRayLauncherConf:
    _target_: str = "hydra_plugins.wtb_conf_launcher.launcher.WtbRayLauncher"
    # unset: Ray is started here only when a job needs it; "auto" or "ray://host:10001": every
    # job runs on that cluster
    address: str | None = None
    # jobs that run at once (local workers and actors alike); unset: CPUs // num_cpus
    num_actors: int | None = None
    # CPUs each running job reserves; below 1 runs more jobs than cores (jobs that wait on I/O)
    num_cpus: float = 1.0
    # bytes of memory each Ray actor reserves; unset: no reservation
    memory: int | None = None
    # how often a job is retried when its process dies (OOM kill, os._exit, lost node)
    max_retries: int = 1
    # seconds a job may run before its process is killed and the job recorded failed
    timeout_s: float | None = None
    # after the first failed job, launch no more (jobs already running finish)
    fail_fast: bool = False
    # live progress view; unset: on when stdout is a terminal, plain lines otherwise
    progress: bool | None = None
    # print a table of the jobs at the end
    summary: bool = True
    # run jobs that need no other interpreter in processes forked from this one, at once;
    # false: every job runs on a Ray actor
    local_workers: bool = True
    # {_target_: ..., **kwargs}: made once per sweep; sees every job's composed config before
    # any runs and says per job: done already, which interpreter, what it waits for
    planner: Any = None
    # directories put on the workers' sys.path, after the launch directory (always first)
    code_paths: list[str] = field(default_factory=list)
    # whether every node of the cluster (address) sees the driver's launch dir at its path;
    # false: it is shipped to each actor (Ray working_dir), job dirs go under each node's Ray
    # temp dir, jobs are pinned to nodes, and the store must be reachable from every node
    shared_disk: bool = True
    # extra keyword arguments for ray.init, e.g. {num_cpus: 4}
    init_kwargs: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/launcher", name="wtb_ray", node=WtbRayLauncherConf, provider="wtb_conf"
)
