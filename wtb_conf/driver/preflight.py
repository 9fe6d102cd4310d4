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

from wtb_conf.config.checks import clip, clip_message
from wtb_conf.config.models import GROUPS, check_config
from wtb_conf.config.values import ConfigError
from wtb_conf.job import admission
from wtb_conf.job.fork import ForkError
from wtb_conf.job.workflow import WorkflowError
from wtb_conf.store import StoreError

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
    """The job's config as the launcher composes it (hydra_plugins.wtb_conf_launcher's)."""
    job = GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
    with open_dict(job):
        job.hydra.job.id = f"{job.hydra.job.name}_{num}"
        job.hydra.job.num = num
        job.hydra.sweep.dir = str(config.hydra.sweep.dir)
    return job


def _resolved(job: DictConfig, task: DictConfig | None = None) -> dict[str, Any]:
    """The task config (`job` without its `hydra` node, or `task`), resolved as the job will
    resolve it: with HydraConfig the job's (set_config copies it whole, ~15 ms: only when it
    holds another job's)."""
    task = job if task is None else task
    if _holds[0] is not job:
        HydraConfig.instance().set_config(job)
        _holds[0] = job
    return {str(k): OmegaConf.to_container(task[k], resolve=True)
            if OmegaConf.is_config(task[k]) else task[k] for k in task if k != "hydra"}


_holds: list[Any] = [None]  # the job config HydraConfig holds a copy of (check_jobs resets)


class Composer:
    """Each job's resolved task config, as Hydra composes it: its config groups make the
    defaults list, then its other overrides are applied to the result
    (ConfigLoaderImpl._load_configuration_impl). Composing is what costs (~50 ms a job), so
    it is done once per distinct choice of groups, and a job's value overrides are applied
    to a copy of that, as Hydra applies them. A job that overrides `hydra.*` is composed
    whole."""

    def __init__(self, config: DictConfig) -> None:
        self.config = config
        self.loader = GlobalHydra.instance().config_loader()
        self.parser = OverridesParser.create(config_loader=self.loader)
        self.bases: dict[tuple[str, ...], tuple[DictConfig, Any]] = {}
        self.groups: dict[str, bool] = {}

    def _is_group(self, override: Any) -> bool:  # as hydra's defaults_list.Overrides tells
        key = override.key_or_group
        if key not in self.groups:
            self.groups[key] = self.loader.repository.group_exists(key)
        return self.groups[key] and not isinstance(override.value(), dict)

    def task(self, overrides: list[str], num: int) -> dict[str, Any]:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        parsed = self.parser.parse_overrides(overrides)
        groups = tuple(o.input_line for o in parsed if self._is_group(o))
        values = [o for o in parsed if not self._is_group(o)]
        if any(o.key_or_group.split(".")[0] in ("hydra", "") for o in values):
            return _resolved(_compose(self.config, overrides, num))
        if groups not in self.bases:
            base = _compose(self.config, list(groups), num)
            self.bases[groups] = (base, OmegaConf.to_container(
                OmegaConf.masked_copy(base, [k for k in base if k != "hydra"]), resolve=False))
        base, plain = self.bases[groups]
        task = OmegaConf.create(plain)
        OmegaConf.set_struct(task, True)  # `key=` of a key it lacks fails, as in Hydra
        ConfigLoaderImpl._apply_overrides_to_config(values, task)
        return _resolved(base, task)


GRAPH_KEYS = ("workflow", "env", "compare", "fork")  # what job_config checks


def check_task(data: dict[str, Any], launch_dir: Path,
               verdicts: dict[str, str | None] | None = None) -> str | None:
    """One job's resolved task config, whole: what the job checks before it runs, plus its
    case input files (targets imported unless the job's env is another interpreter). The
    problems, or None. `verdicts` caches them by the values each part reads: jobs that differ
    only in their storage share the workflow's verdict."""
    verdicts = {} if verdicts is None else verdicts
    if "workflow" not in data:
        return missing_workflow()
    graph = {k: data[k] for k in GRAPH_KEYS if k in data}
    rest = {k: v for k, v in data.items() if k not in GRAPH_KEYS}
    found = []
    for part, check in ((rest, _check_rest), (graph, _check_graph)):
        key = json.dumps([check.__name__, sorted(data), part], sort_keys=True, default=str)
        if key not in verdicts:
            try:
                check(part, data, launch_dir)
                verdicts[key] = None
            except REFUSED as e:
                verdicts[key] = clip_message(str(e))
            except Exception as e:  # not a config error: the job meets it and records it
                log.debug("not checked: %s: %s", type(e).__name__, e)
                verdicts[key] = None
        if verdicts[key] is not None:
            found.append(verdicts[key])
    return "\n".join(found) or None


def _check_rest(part: dict[str, Any], data: dict[str, Any], launch_dir: Path) -> None:
    check_config(part, whole=GROUPS)  # storage, the switches


def _check_graph(part: dict[str, Any], data: dict[str, Any], launch_dir: Path) -> None:
    check_config(part, whole=GROUPS)
    cfg = OmegaConf.create({**part, **{k: None for k in data if k not in part}})
    config = admission.job_config(cfg, launch_dir)
    if not admission.wants_env(data.get("env")):  # (an env's targets import only there)
        admission.check_imports(config)


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
    _holds[0] = None
    with _as_job(config):  # HydraConfig set back to the primary's when done
        return _check_jobs(config, jobs, launch_dir)


def _check_jobs(config: DictConfig, jobs: list[list[str]], launch_dir: Path) -> int:
    shown = _differing(jobs)
    composer = Composer(config)
    verdicts: dict[str, str | None] = {}  # a part of a config -> its problems (None: fine)
    failed: dict[str, list[int]] = {}  # problems -> the jobs that have them
    for num, overrides in enumerate(jobs):
        try:
            data = composer.task(overrides, num)
        except REFUSED as e:  # a group option that does not exist, a merge that fails
            failed.setdefault(clip_message(_one_line(str(e))), []).append(num)
            continue
        except Exception as e:  # what resolves only in a job (${hydra:runtime.output_dir})
            log.debug("job #%d not checked at the sweep's start: %s: %s", num,
                      type(e).__name__, e)
            continue
        if (problems := check_task(data, launch_dir, verdicts)) is not None:
            failed.setdefault(problems, []).append(num)
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
