"""Order a batch for shared prefixes: jobs whose first step is the same wait for one of them.

A job forks from the deepest checkpoint the same configs already produced (wtb_conf.fork),
but in a parallel batch nothing is stored yet when the jobs start. So the batch's jobs are
grouped by the key of their first step, from their composed configs, and the first job of
each group runs before the others of its group start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf


def leaders(launcher: Any, job_overrides: Sequence[Sequence[str]]) -> list[int | None]:
    """Per job, the index of the job it waits for (None: it starts when an actor is free)."""
    config = launcher.config
    if "workflow" not in config or len(job_overrides) < 2:
        return [None] * len(job_overrides)  # not a wtb_conf app, or nothing to share
    from wtb_conf.fork import first_step_key
    from wtb_conf.workflow import BREAKPOINTS

    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, overrides in enumerate(job_overrides):
        try:  # not the whole config: its hydra node only resolves inside a job
            cfg = launcher.hydra_context.config_loader.load_sweep_config(config, list(overrides))
            if (not cfg.get("share_prefixes", True) or cfg.get("rerun") or cfg.get("fork")
                    or any(cfg.workflow.get(k) for k in BREAKPOINTS)):  # jobs that never share
                out.append(None)
                continue
            workflow = OmegaConf.to_container(cfg.workflow, resolve=True)
            env = OmegaConf.to_container(cfg.env, resolve=True) if "env" in cfg else None
        except Exception:  # the job reports its own config errors when it runs
            out.append(None)
            continue
        assert isinstance(workflow, dict)
        key = first_step_key(workflow, env)
        if key in first:
            out.append(first[key])
        else:
            first[key] = i
            out.append(None)
    return out
