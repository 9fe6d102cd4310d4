"""A job before any of its nodes runs, made once: its config checked (`JobConfig`), where it
is stored, its identity and the records that open it (`Admission`), and the two ways it ends
without running (a cache hit, a config that cannot run).

Where a planner runs (the default launcher), the planner admits each job in the driver and
hands the Admission to the job with its plan (`hydra_plugins.wtb_conf_launcher.plan`); the job
admits itself only where no planner ran (Hydra's basic launcher, `hydra/launcher=wtb_ray`, or
a job whose env is built on the node it lands on). Nothing downstream checks the config again.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wtb_conf.config.checks import (
    case_file_problems,
    clip_message,
    state_path_problems,
    top_level_problems,
)
from wtb_conf.config.models import FlagsConfig, ForkConfig, WorkflowConfig, check, storage_spec
from wtb_conf.job.fork import ForkError
from wtb_conf.job.identity import identity_of, input_files
from wtb_conf.job.scoring import check_compare, eval_key, evaluators_of, rescore
from wtb_conf.job.workflow import WorkflowError, build_graph, check_workflow
from wtb_conf.storage import StorageSpec
from wtb_conf.store import Store, StoreError, store_at

log = logging.getLogger(__name__)

# Set in a job's environment where no planner hands it an Admission: the sweep callback's
# (the sweep the job files under), a planner's for a job whose env is made on its node.
SWEEP_ENV = "WTB_SWEEP_ID"
# the interrupted sweeps this one finishes (comma-separated ids): with rerun=true, their
# completed runs are still cache hits, so that the same command finishes what they began
CONTINUES_ENV = "WTB_CONTINUES"
ENV_ID = "WTB_ENV_ID"  # the venv_manager env a job runs in
# the driver's launch dir, which a run records (a job shipped to another node runs in a copy
# of it there, which `wtb rerun` on the driver could not find)
LAUNCH_DIR_ENV = "WTB_LAUNCH_DIR"


@functools.cache
def installed(path: tuple[str, ...] | None = None) -> list[str]:
    """`name==version` of every distribution on `path` (default: sys.path): the job's env
    lock. Read from the `.dist-info` / `.egg-info` directory names (importlib.metadata parses
    every METADATA file, ~120 ms here, which a job-cache hit cannot afford); cached."""
    found = set()
    for entry in sys.path if path is None else path:
        # Ray workers put Ray's vendored packages (psutil, colorama) on sys.path; they are Ray's
        # insides, not the job's env, and would make a job's identity depend on the launcher.
        if entry.replace(os.sep, "/").endswith("/ray/thirdparty_files"):
            continue
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            stem, dot, kind = name.rpartition(".")
            if dot and kind in ("dist-info", "egg-info") and "-" in stem:
                dist, version = stem.split("-")[:2]
                found.add(f"{dist.replace('_', '-').lower()}=={version}")
    return sorted(found)


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def wants_env(env_cfg: Mapping[str, Any] | None) -> bool:
    """Whether a job's env group asks for its own interpreter (the default env does not).
    Here, not in wtb_conf.driver.envs: a job in an env's interpreter has no venv_manager to
    import."""
    return bool(env_cfg) and bool(env_cfg.get("packages") or env_cfg.get("python"))


@dataclass(frozen=True)
class JobConfig:
    """A job's config as its run reads it, checked: the workflow model and its plain data,
    the compare settings, the fork, the switches. Picklable (handed to the job's worker)."""

    workflow: WorkflowConfig
    data: dict[str, Any]  # the workflow, plain and resolved (what digests and scoring read)
    env: dict[str, Any] | None
    compare: dict[str, Any]
    fork: ForkConfig | None
    eval_key: str  # which evaluators score it (wtb_conf.job.scoring)
    rerun: bool
    share_prefixes: bool
    trials: int  # times each case runs: the top-level `trials`, else the workflow's, else 1


def job_config(cfg: DictConfig, launch_dir: Path | None = None) -> JobConfig:
    """The job `cfg` checked, importing nothing: raises the config error the job would fail
    with. Also the sweep's check of every job at its start (wtb_conf.driver.preflight).
    `launch_dir`: check the case input files (`file` / `text_file` fields) there; None: the
    nodes will say."""
    if problems := top_level_problems(cfg.keys()):
        raise WorkflowError("\n".join(problems))
    if "workflow" not in cfg:
        raise WorkflowError("workflow: none chosen; pick one: workflow=NAME "
                            "(conf/workflow/NAME.yaml)")
    model = check_workflow(cfg.workflow)
    data = plain(cfg.workflow)
    if problems := state_path_problems(data):
        raise WorkflowError("\n".join(problems))
    fork = None
    if cfg.get("fork") is not None:  # its run and checkpoint (and fork.after: which case ran
        # it) are looked up in the store when the job runs
        fork = check(ForkConfig, cfg.fork, "fork", error=ForkError)
    compare = check_compare(plain(cfg.get("compare")), data)
    cases = data.get("cases")
    if fork is None and (not cases or not isinstance(cases, Mapping)):
        raise WorkflowError("workflow.cases: add at least one input case: `cases: {one: {}}`")
    if launch_dir is not None and (problems := case_file_problems(data, launch_dir)):
        raise WorkflowError("\n".join(problems))
    # (checked at the sweep's start, with the groups: here only read)
    flags = check(FlagsConfig, {k: cfg[k] for k in FlagsConfig.keys() if cfg.get(k) is not None},
                  "")
    return JobConfig(model, data, plain(cfg.get("env")), compare, fork, eval_key(data),
                     flags.rerun, flags.share_prefixes, flags.trials or model.trials or 1)


def check_imports(config: JobConfig) -> tuple[Any, list]:
    """The job's graph and evaluators, their `_target_`s imported (in the interpreter the job
    runs in): raises the error the job would fail with."""
    return build_graph(config.workflow), evaluators_of(config.workflow)


@dataclass
class Admission:
    """A job as the bench takes it in: where it runs from, where it is stored, what it is and
    its identity. `config` is None when its config cannot run; `error` then says why (the
    job is recorded failed with it). Picklable: a planner hands it to the job's worker."""

    num: int  # hydra.job.num
    overrides: list[str]
    workflow_name: str | None
    launch_dir: Path  # where the job runs from (on a node: its copy of the launch dir)
    recorded_launch_dir: str  # the driver's launch dir, as the run records it
    job_dir: Path
    storage: StorageSpec
    config_yaml: str  # the resolved task config, as the run records it
    sweep_id: str
    lock: list[str]
    inputs: str | None  # the commit of the case input files, if the cases name some
    digests: dict[str, str]
    continues: list[str] | None  # rerun=true: the interrupted sweeps whose runs still count
    env_id: str | None
    python: str
    config: JobConfig | None
    error: BaseException | None = None  # the config error, when config is None


def storage_of(cfg: DictConfig, launch_dir: Path) -> StorageSpec:
    return storage_spec(cfg.storage, launch_dir)


def _commit_inputs(store: Store, data: Mapping[str, Any], launch_dir: Path) -> str | None:
    """Commit the input files the cases name (part of the job's identity), if any."""
    files = input_files(data.get("cases"), launch_dir)
    if not files:
        return None
    try:
        return store.commit_dir(launch_dir, message="inputs", files=files)
    except OSError as e:  # unreadable or gone meanwhile: the nodes will say what they make of it
        log.warning("input files not stored, so not part of the job's identity: %s", e)
        return None


def _config_yaml(cfg: DictConfig) -> str:
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # an interpolation that does not resolve: keep it as written
        return OmegaConf.to_yaml(cfg)


def admit(cfg: DictConfig, hc: DictConfig, lock: list[str] | None = None,
          env_id: str | None = None, python: str = sys.executable,
          config: JobConfig | BaseException | None = None) -> tuple[Admission, Store]:
    """Admit the job `cfg` (its task config) with Hydra config `hc`: check its config (or take
    `config`, checked already, or the error checking it raised), open its store, commit its
    input files and compute its identity. `lock`: the env the job runs in, when it is not this
    process's. Returns the admission and the open store, which the caller closes; if this
    raises, the store is closed already."""
    launch_dir = Path(hc.runtime.cwd)
    # a planner sees the job before Hydra's run_job has set its output dir
    job_dir = Path(OmegaConf.select(hc, "runtime.output_dir", default=None)
                   or os.path.abspath(os.path.join(hc.sweep.dir, str(hc.sweep.subdir))))
    overrides = list(hc.overrides.task)
    if config is None:
        try:
            config = job_config(cfg)
        except Exception as e:  # the job's recorded failure, with its identity
            config = e
    error = None if isinstance(config, JobConfig) else config
    storage = storage_of(cfg, launch_dir)
    store = store_at(storage)
    try:
        sweep_id = os.environ.get(SWEEP_ENV) or store.create_sweep(overrides)
        lock = installed() if lock is None else lock
        data = config.data if isinstance(config, JobConfig) else plain(cfg.workflow) or {}
        inputs = _commit_inputs(store, data if isinstance(data, Mapping) else {}, launch_dir)
        digests = identity_of(cfg, lock, inputs)
    except BaseException:
        store.close()
        raise
    continues = os.environ.get(CONTINUES_ENV)
    return Admission(
        num=hc.job.get("num") or 0, overrides=overrides,
        workflow_name=hc.runtime.choices.get("workflow") or cfg.workflow.get("name"),
        launch_dir=launch_dir,
        recorded_launch_dir=os.environ.get(LAUNCH_DIR_ENV) or str(launch_dir),
        job_dir=job_dir, storage=storage, config_yaml=_config_yaml(cfg), sweep_id=sweep_id,
        lock=lock, inputs=inputs, digests=digests,
        continues=continues.split(",") if continues else None,
        env_id=env_id if env_id is not None else os.environ.get(ENV_ID) or None,
        python=python, config=config if isinstance(config, JobConfig) else None,
        error=error), store


def record_start(store: Store, job: Admission) -> str:
    return store.start_run(
        job.sweep_id,
        job_num=job.num,
        overrides=job.overrides,
        workflow=job.workflow_name,
        config_yaml=job.config_yaml,
        config_digest=job.digests["config"],
        job_dir=str(job.job_dir),
        python=job.python,
        env_id=job.env_id,
        env_lock=job.lock,
        identity=job.digests,
        parent_run=_parent_of(store, job.config),
        launch_dir=job.recorded_launch_dir,
        inputs_commit=job.inputs,
    )


def _parent_of(store: Store, config: JobConfig | None) -> str | None:
    """The run `fork.run` names, if it names one (the fork's plan reports what is wrong)."""
    if config is None or config.fork is None:
        return None
    try:
        return store.resolve("runs", str(config.fork.run))
    except StoreError:
        return None


def record_unopened(cfg: DictConfig, hc: DictConfig, error: str) -> None:
    """A failed run for a job that could not even be admitted (its identity, its input files
    or the store raised): what is known of it, and the error."""
    launch_dir = Path(hc.runtime.cwd)
    storage = storage_of(cfg, launch_dir)
    with store_at(storage) as store:
        sweep_id = os.environ.get(SWEEP_ENV) or store.create_sweep(list(hc.overrides.task))
        run_id = store.start_run(
            sweep_id, hc.job.get("num") or 0, list(hc.overrides.task),
            hc.runtime.choices.get("workflow"), _config_yaml(cfg), "",
            os.path.abspath(os.path.join(hc.sweep.dir, str(hc.sweep.subdir))),
            launch_dir=os.environ.get(LAUNCH_DIR_ENV) or str(launch_dir))
        store.finish_run(run_id, "failed", None, {}, error)


def _score_cached(store: Store, earlier: dict[str, Any], job: Admission,
                  config: JobConfig) -> dict[str, Any] | None:
    """The evaluation of a cache hit: the earlier run's newest one if the same evaluators
    made it, else its stored cases scored again (nothing runs). None when that fails (a
    stored case cannot be restored, an evaluator does not import): the job then runs."""
    try:
        # any earlier scoring by the same evaluators will do (an LLM judge costs money)
        same = next((e for e in store.evaluations(earlier["run_id"])
                     if e["eval_key"] == config.eval_key), None)
        if same is not None:
            cases, summary, source = same["cases"], same["summary"], "cache"
        else:
            cases, summary = rescore(store, earlier["run_id"], config.data, job.launch_dir)
            source = "evaluate"
    except Exception as e:
        log.warning("not a cache hit: %s: %s", type(e).__name__, e)
        return None
    return {"source": source, "eval_key": config.eval_key, "compare": config.compare,
            "cases": cases, "summary": summary}


def cache_hit(store: Store, job: Admission, run_id: str | None = None,
              ) -> tuple[dict, dict] | None:
    """The earlier run this job would repeat, and its evaluation; None: the job must run.
    `run_id`: this job's own run; if the same job is running elsewhere, started earlier (two
    sweeps at once), this waits for it to end and reuses it rather than running it twice."""
    config = job.config
    if config is None:
        return None
    within = None  # any sweep's run will do
    if config.rerun:
        if not job.continues:
            return None
        within = job.continues
    if run_id is not None:
        _wait_for_twin(store, run_id, job.digests["job_key"])
    earlier = store.cached_run(job.digests["job_key"], within)
    if earlier and earlier["commit"] and (gone := store.missing_blobs(earlier["commit"])):
        log.warning("not a cache hit: run %s's files are not whole in the store (%d blobs "
                    "missing, e.g. %s; `wtb fsck` says more): it runs again",
                    earlier["run_id"][:8], len(gone), gone[0][:12])
        return None
    evaluation = _score_cached(store, earlier, job, config) if earlier else None
    return (earlier, evaluation) if evaluation is not None else None


def _wait_for_twin(store: Store, run_id: str, job_key: str) -> None:
    pause, told = 0.05, None
    while (twin := store.running_twin(run_id, job_key)) is not None:
        if twin != told:
            log.info("run %s: the same job is running as run %s; waiting to reuse it",
                     run_id[:8], twin[:8])
            told = twin
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def record_cached(store: Store, run_id: str, earlier: dict, evaluation: dict) -> dict[str, Any]:
    store.finish_cached(run_id, earlier, evaluation)  # scored first: run_cached ends its log
    return {"run_id": run_id, "status": "cached", "commit": earlier["commit"], "error": None,
            "metrics": earlier["metrics"], "cached_from": earlier["run_id"],
            "scores": evaluation["summary"]["scores"]}


def check_interpreter(job: Admission) -> None:
    """A job whose env asks for its own interpreter must run in it: in the driver's, a
    comparison of package versions would compare nothing."""
    if job.config is not None and wants_env(job.config.env) and job.env_id is None:
        raise WorkflowError(
            "env: this job asks for its own interpreter (env.packages or env.python), but it "
            "runs in the driver's: only wtb_conf's planner (the default, hydra/launcher=wtb) "
            "provisions envs; drop hydra/launcher=basic or wtb_ray, or use env=default")


def record_failure(store: Store, run_id: str, error: BaseException, out_dir: Path | None = None,
                   tb: str | None = None) -> dict[str, Any]:
    """Close a run as failed with `error` (raised just now, or `tb` its traceback); keep
    what it wrote to `out_dir`. A failure to keep it is logged, never the run's error."""
    message = clip_message(f"{type(error).__name__}: {error}")  # no 100 KB value in the store
    log.error("run %s failed: %s", run_id, message)
    tb = tb or "".join(traceback.format_exception(type(error), error, error.__traceback__))
    commit = None
    if out_dir is not None and out_dir.is_dir():  # keep what the failed run wrote
        try:
            commit = store.commit_dir(out_dir, message="final")
        except Exception as e:
            log.error("run %s: its files were not committed: %s: %s", run_id,
                      type(e).__name__, e)
            tb += f"\n(its files were not committed: {type(e).__name__}: {e})"
    store.finish_run(run_id, "failed", commit, {}, message, tb)
    return {"run_id": run_id, "status": "failed", "commit": commit, "error": message,
            "metrics": {}, "scores": None}
