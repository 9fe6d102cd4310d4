"""Every job of a sweep, composed and checked when the sweep starts, before anything is
written: a config error in any job refuses the whole sweep in one message (naming the jobs'
overrides when only some have it), instead of a recorded failure per job.

The jobs are the ones Hydra will launch: the sweeper's own expansion of its `params` and the
command line (its `split_arguments`), each composed by Hydra's config loader as the launcher
composes it (`load_sweep_config`). Each distinct resolved config is checked once, so a
10,000-job sweep of a few distinct workflows costs little beyond composing them."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from wtb_conf import intake
from wtb_conf.config_checks import clip, clip_message
from wtb_conf.config_values import ConfigError
from wtb_conf.fork import ForkError
from wtb_conf.schemas import GROUPS, check_config
from wtb_conf.store import StoreError
from wtb_conf.workflow import WorkflowError

log = logging.getLogger(__name__)

REFUSED = (CompactHydraException, WorkflowError, ForkError, StoreError)
SHOWN_JOBS = 3  # per message: more are counted, not listed


def missing_workflow() -> str:
    """Hydra's own words for a config group left unchosen, on one line."""
    try:
        options = GlobalHydra.instance().config_loader().get_group_options("workflow")
    except Exception:  # no Hydra here (a test): say it without the options
        options = []
    where = (f"available options: {', '.join(options)}" if options else
             "there is none: add conf/workflow/NAME.yaml in this directory (docs/config.md)")
    return f"You must specify 'workflow', e.g, workflow=<OPTION>; {where}"


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """The sweeper logs its expansion when it runs; not twice."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def job_overrides(config: DictConfig, sweepers: Sequence[str]) -> list[list[str]] | None:
    """Each job's overrides, as the sweeper of `config` (one of `sweepers`) will make them;
    None for another sweeper, or overrides it will refuse itself."""
    target = OmegaConf.select(config, "hydra.sweeper._target_")
    if target not in sweepers:
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        cls = get_class(target)
        with _quiet(cls.__module__):
            batches = cls.split_arguments(parser.parse_overrides(arguments), None)
    except Exception as e:  # the sweeper says what is wrong with them, as it would
        log.debug("jobs not expanded at the sweep's start: %s: %s", type(e).__name__, e)
        return None
    return [list(job) for batch in batches for job in batch]


@contextlib.contextmanager
def _as_job(job_config: DictConfig) -> Iterator[None]:
    """HydraConfig set to the job's, for `${hydra:...}` in its config, then set back."""
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job_config)
    try:
        yield
    finally:
        if saved is not None:
            HydraConfig.instance().set_config(saved)


def _compose(config: DictConfig, overrides: list[str], num: int) -> DictConfig:
    """The job's config as the launcher composes it (hydra_plugins.wtb_conf_launcher._core)."""
    job = GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
    with open_dict(job):
        job.hydra.job.id = f"{job.hydra.job.name}_{num}"
        job.hydra.job.num = num
        job.hydra.sweep.dir = str(config.hydra.sweep.dir)
    return job


def _resolved(job: DictConfig) -> dict[str, Any]:
    """The task config (no `hydra` node), resolved as the job will resolve it."""
    with _as_job(job):
        return {str(k): OmegaConf.to_container(job[k], resolve=True)
                if OmegaConf.is_config(job[k]) else job[k] for k in job if k != "hydra"}


def check_task(data: dict[str, Any], launch_dir: Path) -> None:
    """One job's resolved task config, whole: what the job checks before it runs, plus its
    case input files. Targets are imported unless the job's env is another interpreter."""
    if "workflow" not in data:
        raise ConfigError(missing_workflow())
    cfg = OmegaConf.create(data)
    check_config(cfg, whole=GROUPS)
    intake.check_graph(cfg, imports=not intake.wants_env(data.get("env")),
                       launch_dir=launch_dir)


def _differing(jobs: list[list[str]]) -> list[list[str]]:
    """Each job's overrides without those every job has (+experiment=demo)."""
    common = set.intersection(*(set(j) for j in jobs)) if jobs else set()
    return [[o for o in job if o not in common] for job in jobs]


def check_jobs(config: DictConfig, sweepers: Sequence[str], launch_dir: Path) -> int | None:
    """Compose and check every job of the sweep `config` starts; raise ConfigError naming
    the problems (and which jobs have them, unless all do). Returns the number of jobs
    checked (None: the sweeper is not one whose jobs can be told here)."""
    jobs = job_overrides(config, sweepers)
    if jobs is None:
        return None
    shown = _differing(jobs)
    verdicts: dict[str, str | None] = {}  # resolved config -> its problems (None: fine)
    failed: dict[str, list[int]] = {}  # problems -> the jobs that have them
    for num, overrides in enumerate(jobs):
        try:
            data = _resolved(_compose(config, overrides, num))
        except REFUSED as e:  # a group option that does not exist, a merge that fails
            failed.setdefault(clip_message(_one_line(str(e))), []).append(num)
            continue
        except Exception as e:  # what resolves only in a job (${hydra:runtime.output_dir})
            log.debug("job #%d not checked at the sweep's start: %s: %s", num,
                      type(e).__name__, e)
            continue
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in verdicts:
            try:
                check_task(data, launch_dir)
                verdicts[key] = None
            except REFUSED as e:
                verdicts[key] = clip_message(str(e))
            except Exception as e:  # not a config error: the job meets it and records it
                log.debug("job #%d: %s: %s", num, type(e).__name__, e)
                verdicts[key] = None
        if verdicts[key] is not None:
            failed.setdefault(verdicts[key], []).append(num)
    if failed:
        raise ConfigError("\n".join(_refusal(problems, nums, shown, len(jobs))
                                    for problems, nums in failed.items()))
    return len(jobs)


def _one_line(hydra_message: str) -> str:
    """Hydra's composition error on one line: its options listed after their heading, its
    search path (the same for every job) left out."""
    out: list[str] = []
    for line in hydra_message.split("\nConfig search path:")[0].splitlines():
        if not line.strip():
            continue
        if line.startswith("\t") and out:
            out[-1] += (" " if out[-1].endswith(":") else ", ") + line.strip()
        else:
            out.append(line.strip())
    return "; ".join(out)


def _refusal(problems: str, nums: list[int], shown: list[list[str]], total: int) -> str:
    if len(nums) == total:  # every job: the problem alone, as for a single run
        return problems
    named = "; ".join(f"job {n} ({clip(' '.join(shown[n])) or 'no overrides'})"
                      for n in nums[:SHOWN_JOBS])
    more = f" and {len(nums) - SHOWN_JOBS} more" if len(nums) > SHOWN_JOBS else ""
    head = f"{len(nums)} of {total} jobs [{named}{more}]"
    return "\n".join(f"{head}: {line}" for line in problems.splitlines())
