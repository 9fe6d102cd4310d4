"""Launcher settings that cannot work, refused before anything runs: by the launcher, and by
wtb_conf's sweep callback before it records the sweep (`_core.check`). No Ray, no wtb_conf."""

from __future__ import annotations

import importlib
import os
from typing import Any

from hydra.errors import CompactHydraException


class LauncherError(CompactHydraException, ValueError):
    """A launcher setting, or a planner's answer, that cannot work: Hydra prints the message
    alone, which names the key (no traceback: nothing in it would help)."""


def check(params: dict[str, Any]) -> None:
    """What the structured config's types cannot express; errors name the key. Called by the
    launcher, and by wtb_conf's sweep callback before it records the sweep."""
    limits = {"num_actors": 1, "num_cpus": 0.01, "max_retries": 0, "timeout_s": 0.001,
              "memory": 1}
    for key, low in limits.items():
        value = params.get(key)
        if value is not None and value < low:
            unset = " (or leave it unset)" if key in ("num_actors", "memory", "timeout_s") else ""
            raise LauncherError(f"hydra.launcher.{key}={value} is out of range: use at least {low}"
                             + unset)
    joined = bool(params.get("address") or os.environ.get("RAY_ADDRESS"))
    if params.get("shared_disk") is False and not joined:
        raise LauncherError("hydra.launcher.shared_disk=false ships the launch dir to the nodes "
                            "of a Ray cluster: set hydra.launcher.address (or RAY_ADDRESS) to "
                            "that cluster's, or leave shared_disk true for jobs on this machine")
    if params.get("shared_disk") is False:
        for path in params.get("code_paths") or []:
            if os.path.isabs(path) and not os.path.realpath(path).startswith(
                    os.path.realpath(os.getcwd()) + os.sep):
                raise LauncherError(f"hydra.launcher.code_paths: {path} is outside the launch "
                                    "dir, which is all hydra.launcher.shared_disk=false ships "
                                    "to the nodes: put the code in the launch dir (a relative "
                                    "path), or install it on every node")
    check_planner(params)
    if joined:
        return  # a cluster's CPUs are known once it answers (Pool.ray_up)
    # local workers, or the local Ray started for the jobs that need one
    given = (params.get("init_kwargs") or {}).get("num_cpus")
    cpus = given or local_cpus()
    if params.get("num_cpus", 1.0) > cpus:
        where = (f"the local Ray is given {cpus} CPUs (hydra.launcher.init_kwargs.num_cpus)"
                 if given else f"this machine has {cpus} CPUs")
        raise LauncherError(f"hydra.launcher.num_cpus={params['num_cpus']} but {where}; "
                            "ask for at most that many")


def local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def slots(cpus: float, num_cpus: float) -> int:
    """Jobs at once on `cpus` when each reserves `num_cpus` (2 / 0.1 is 20, not 19)."""
    return max(1, int(cpus / num_cpus + 1e-9))


def check_planner(params: dict[str, Any]) -> None:
    """A planner class may check the launcher's settings against what it knows (wtb_conf's:
    that jobs on nodes without the driver's disk can reach its store): a static
    `check(params)` raising an exception whose message names the key. Imported only when
    the jobs leave the driver's disk, so that a sweep on one machine pays nothing for it."""
    target = (params.get("planner") or {}).get("_target_")
    if not target or params.get("shared_disk") is not False:
        return
    module, _, name = target.rpartition(".")
    check_it = getattr(getattr(importlib.import_module(module), name, None), "check", None)
    if check_it is not None:
        check_it(params)
