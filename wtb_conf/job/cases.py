"""A job's cases: which threads it runs, where each one's files go and where it starts.

`trials: N` runs every case N times, each trial its own thread, keyed as wtb_conf.trials
says. A trial's seed and its shared-prefix key come from the case's input and the trial index, so
trial 3 of a case is the same work in every variant and every sweep: going from trials=3 to
trials=5 finds trials 0-2 stored (wtb_conf.job.fork.shared_point) and runs 3 and 4 only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wtb_conf import Trial
from wtb_conf.job.fork import ForkPoint, base_key, plan, shared_point
from wtb_conf.job.workflow import WorkflowError, breakpoints
from wtb_conf.store import Store
from wtb_conf.trials import case_key, identity, split_key, trial_of

log = logging.getLogger(__name__)


@dataclass
class Case:
    """One thread of a job: a case's trial, and where it starts."""

    name: str  # its key: CASE, or CASE/TRIAL when the job has trials > 1
    inputs: Any
    dir: Path  # its output dir
    trial: Trial  # its index and seed (wtb_conf.trial())
    fork: ForkPoint | None = None  # start from this stored checkpoint instead of `inputs`
    updates: dict[str, Any] = field(default_factory=dict)  # applied to the state after forking
    pause: bool = False  # after forking, stop before running anything (rollback)
    base_key: str | None = None  # shared prefixes: links get prefix keys under this base


def case_dir(out_dir: Path, name: Any) -> Path:
    """out/<case>. A case's name is one directory name, and the last part of its thread id
    (`RUN/CASE`): '../../x' or 'a/b' would put its files outside the job's out/ directory."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise WorkflowError(f"workflow.cases: the case name {name!r} is not a plain directory "
                            "name; name cases with no '/', '\\' or NUL, and not '.' or '..'")
    return out_dir / name


def key_dir(out_dir: Path, key: str) -> Path:
    """out/<case>/<trial> for a trial's key (out/<case> for a case of a one-trial job)."""
    case, trial = split_key(key)
    return case_dir(out_dir, case) / str(trial) if "/" in key else case_dir(out_dir, case)


def cases_of(store: Store, config: Any, digests: Mapping[str, str], out_dir: Path,
             ) -> list[Case]:
    """The job's threads: each case of `workflow.cases` `config.trials` times, or for a fork
    the parent's threads at their fork points; with shared prefixes on, a thread starts from
    the deepest stored checkpoint that the same configs produced. `config`: the JobConfig."""
    workflow = config.data
    inputs_of = workflow.get("cases") or {}
    trials = config.trials
    if config.fork is not None:
        state = workflow.get("state")
        fork = plan(store, config.fork, list(state) if isinstance(state, Mapping) else None)
        out = []
        for key, point in fork.points.items():
            case, trial = split_key(key)
            out.append(Case(key, None, key_dir(out_dir, key),
                            trial_of(inputs_of.get(case), digests["inputs"], trial), point,
                            fork.updates, fork.pause))
        if fork.unstarted_from_input:
            out += [Case(key, inputs, key_dir(out_dir, key),
                         trial_of(inputs, digests["inputs"], trial))
                    for case, inputs in inputs_of.items() for trial in range(trials)
                    if (key := case_key(case, trial, trials)) not in fork.points]
        return out
    # A job with breakpoints is not shared: continuing from a stored checkpoint is a resume to
    # LangGraph, which would run past the breakpoint the other job stopped at.
    share = config.share_prefixes and not config.rerun and not breakpoints(config.workflow)
    out = []
    for case, inputs in workflow["cases"].items():  # (job_config made sure there are some)
        case_dir(out_dir, case)  # a name that is no directory name fails before any runs
        for trial in range(trials):
            base = base_key(workflow, identity(inputs, digests["inputs"], trial),
                            digests["env_digest"], digests["code_digest"])
            key = case_key(case, trial, trials)
            out.append(Case(key, inputs, key_dir(out_dir, key),
                            trial_of(inputs, digests["inputs"], trial),
                            shared_point(store, base, workflow) if share else None,
                            base_key=base))
    return out


def set_aside(out_dir: Path) -> None:
    """A retry runs in the job dir of the attempt whose process died: that attempt's files
    (stored up to its last checkpoint) move to out.attempt-N, and every case starts clean."""
    if not out_dir.exists():
        return
    n = 1
    while (aside := out_dir.with_name(f"{out_dir.name}.attempt-{n}")).exists():
        n += 1
    out_dir.rename(aside)
    log.warning("%s held a dead attempt's files: moved to %s", out_dir, aside.name)
