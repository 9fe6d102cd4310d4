"""The records the store hands out, as types, and the statuses they hold, as enums.

Each query of the store returns dicts with exactly the keys of one of the TypedDicts below
(tests/test_records.py checks it on a real run, and checks the field lists in docs/store.md
and the keys `wtb runs/show --json` print against them). Why TypedDict, not pydantic: some
twenty modules above the store index and extend these dicts (`wtb show` adds a run's cases),
and `--json` prints them as they are; a TypedDict is the same dict at no cost per row (`wtb
compare` reads 10,000 runs in one query), while a model would need a dump at every one of
those places. The type is the contract; the dict is what travels.

Statuses are `StrEnum`s: a member equals its string (`RunStatus.FAILED == "failed"`, same
hash), so SQL parameters, JSON and comparisons with strings work unchanged. Records carry the
database's text as it is (a plain str, one of these values): a row edited by hand must still
list (`wtb fsck` reports it), and YAML or OmegaConf treat an Enum other than a str.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict


class RunStatus(StrEnum):
    RUNNING = "running"  # only while the process that started it lives (store/liveness.py)
    COMPLETED = "completed"
    FAILED = "failed"
    CACHED = "cached"  # a cache hit: the commit and metrics of `cached_from`
    PAUSED = "paused"  # stopped at a breakpoint on purpose: not a failure of its sweep


class ThreadStatus(StrEnum):
    """A case's thread: a run's statuses but `cached` (a cache hit runs no case)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"


class SweepStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class EvaluationSource(StrEnum):
    RUN = "run"  # scored as it ended
    CACHE = "cache"  # a cache hit's scoring
    EVALUATE = "evaluate"  # scored again later (`wtb evaluate`)


# statuses of a job that needs no rerun (the job cache)
DONE = frozenset({RunStatus.COMPLETED, RunStatus.CACHED})
# statuses of a job `wtb rerun --failed` leaves alone: done, or paused on purpose
SETTLED = DONE | {RunStatus.PAUSED}


class Sweep(TypedDict):
    sweep_id: str
    status: str  # a SweepStatus
    created_at: str
    finished_at: str | None
    sweep_dir: str | None
    argv: list[str]


class Run(TypedDict):
    """One run (`runs()`, `cached_run()`): the object `wtb runs --json` prints."""

    run_id: str
    sweep_id: str
    job_num: int
    status: str  # a RunStatus
    overrides: list[str]
    workflow: str | None
    config_digest: str
    job_dir: str
    started_at: str
    finished_at: str | None
    error: str | None
    metrics: dict[str, Any]
    commit: str | None
    checkpoints: int  # how many checkpoint links it has
    python: str | None
    env_id: str | None
    job_key: str | None
    cached_from: str | None
    parent_run: str | None
    launch_dir: str | None
    inputs_commit: str | None
    host: str | None  # the machine's name, without boot id and pid namespace
    ray_node: str | None


class RunDetail(Run):
    """One run with what only `run()` reads: its config, traceback and installed packages."""

    traceback: str | None
    config_yaml: str
    env_lock: list[str]


class CompareRun(TypedDict):
    """What `wtb compare` needs of a run (`compare_runs()`): a Run's keys, fewer."""

    run_id: str
    sweep_id: str
    job_num: int
    status: str  # a RunStatus
    overrides: list[str]
    workflow: str | None
    started_at: str
    finished_at: str | None
    error: str | None
    metrics: dict[str, Any]
    commit: str | None
    cached_from: str | None
    parent_run: str | None


class Thread(TypedDict):
    """One case of a run: its LangGraph thread (`threads()`)."""

    thread_id: str
    case: str
    status: str  # a ThreadStatus
    final_state: dict[str, Any] | None
    commit: str | None
    parent_thread: str | None
    parent_checkpoint: str | None
    inherited: list[str]
    error: str | None
    traceback: str | None
    failed_node: str | None


class CaseOutcome(TypedDict):
    """How one case of a run ended (`compare_cases()`)."""

    run_id: str
    case: str
    status: str  # a ThreadStatus
    error: str | None
    failed_node: str | None
    commit: str | None


class CheckpointLink(TypedDict):
    """A LangGraph checkpoint linked to the commit of its case directory."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    run_id: str
    step: int
    source: str
    nodes: list[str]
    path: list[str]  # every node run up to it, inherited ones included
    commit: str


class RunCheckpoint(CheckpointLink):
    """A run's link with its case's name (`checkpoints()`, `checkpoint()`)."""

    case: str


class ShareableLink(CheckpointLink):
    """A link another job may fork from (`shareable()`)."""

    prefix_key: str | None


class Event(TypedDict):
    """One entry of the audit trail (`events()`): what `wtb log --json` prints."""

    at: str
    kind: str
    data: dict[str, Any]


class Evaluation(TypedDict):
    """One scoring of a run (`evaluations()`, `latest_evaluations()`)."""

    evaluation_id: str
    run_id: str
    created_at: str
    source: str  # an EvaluationSource
    eval_key: str
    compare: dict[str, Any]
    cases: dict[str, Any]
    summary: dict[str, Any]


@dataclass(frozen=True)
class NewRun:
    """What `start_run` records of a run about to start: its fields are start_run's
    parameters (a test keeps them equal), so that admission can build one and hand it on,
    as `store.start_run(**vars(new_run))`."""

    sweep_id: str
    job_num: int
    overrides: list[str]
    workflow: str | None
    config_yaml: str
    config_digest: str
    job_dir: str
    python: str | None = None
    env_id: str | None = None
    env_lock: list[str] | None = None
    identity: dict[str, str] | None = None  # job_key, env_digest, code_digest
    parent_run: str | None = None
    launch_dir: str | None = None
    inputs_commit: str | None = None
