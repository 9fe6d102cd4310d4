"""A job before any of its nodes runs: its identity, the store records that open it, and the
two ways it ends without running (a cache hit, a config that cannot run). Used by the job
itself (wtb_conf.job.task) and, ahead of it, by wtb_conf's planner (wtb_conf.driver.planner).
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
from wtb_conf.config.models import ForkConfig, StorageConfig, check
from wtb_conf.job.fork import ForkError
from wtb_conf.job.identity import identity_of, input_files
from wtb_conf.job.scoring import check_compare, eval_key, evaluators_of, rescore
from wtb_conf.job.workflow import WorkflowError, build_graph, check_workflow
from wtb_conf.store import Store, StoreError, open_store

log = logging.getLogger(__name__)

SWEEP_ENV = "WTB_SWEEP_ID"  # set by the sweep callback in the driver; jobs file under it
# the interrupted sweeps this one finishes (comma-separated ids): with rerun=true, their
# completed runs are still cache hits, so that the same command finishes what they began
CONTINUES_ENV = "WTB_CONTINUES"
ENV_ID = "WTB_ENV_ID"  # set by the planner for a job that runs in a venv_manager env
# set by the planner: the driver's launch dir, which a run records (a job shipped to another
# node runs in a copy of it there, which `wtb rerun` on the driver could not find)
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


def storage_paths(storage: Any, base: Path) -> dict[str, Any]:
    """The storage group, validated, with relative paths resolved against `base` (the launch
    dir). URLs (postgresql://..., s3://...) are passed on as they are: they name the same
    place from every directory and node."""

    def path(p: str) -> str:
        return p if "://" in p else str(p if os.path.isabs(p) else base / p)

    spec = check(StorageConfig, storage, "storage", error=StoreError)
    db_url, prefix = spec.db_url, "sqlite:///"
    if db_url.startswith(prefix) and db_url[len(prefix):] not in ("", ":memory:"):
        db_url = prefix + path(db_url[len(prefix):])
    return {
        "db_url": db_url,
        "blob_root": path(spec.blob_root),
        "checkpoints": path(spec.checkpoints),
        "inline_max": spec.inline_max,
    }


def open_store_for(cfg: DictConfig, base: Path) -> tuple[Store, dict[str, Any]]:
    paths = storage_paths(cfg.storage, base)
    return open_store(paths["db_url"], paths["blob_root"], paths["inline_max"]), paths


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _commit_inputs(store: Store, cfg: DictConfig, launch_dir: Path) -> str | None:
    """Commit the input files the cases name (part of the job's identity), if any."""
    files = input_files(plain(cfg.workflow.get("cases")), launch_dir)
    if not files:
        return None
    try:
        return store.commit_dir(launch_dir, message="inputs", files=files)
    except OSError as e:  # unreadable or gone meanwhile: the nodes will say what they make of it
        log.warning("input files not stored, so not part of the job's identity: %s", e)
        return None


def _parent_of(store: Store, cfg: DictConfig) -> str | None:
    """The run `fork.run` names, if it names one (plan() reports what is wrong otherwise)."""
    fork = cfg.get("fork")
    if not isinstance(fork, Mapping) or not fork.get("run"):
        return None
    try:
        return store.resolve("runs", str(fork.get("run")))
    except StoreError:
        return None


def _score_cached(store: Store, earlier: dict[str, Any], cfg: DictConfig,
                  launch_dir: Path) -> dict[str, Any] | None:
    """The evaluation of a cache hit: the earlier run's newest one if the same evaluators
    made it, else its stored cases scored again (nothing runs). None when that fails (the
    evaluators' config is wrong, a stored case cannot be restored): the job then runs as
    usual, and reports a config error itself."""
    workflow = plain(cfg.workflow)
    try:
        compare = check_compare(plain(cfg.get("compare")), workflow)
        key = eval_key(workflow)
        # any earlier scoring by the same evaluators will do (an LLM judge costs money)
        same = next((e for e in store.evaluations(earlier["run_id"]) if e["eval_key"] == key),
                    None)
        if same is not None:
            cases, summary, source = same["cases"], same["summary"], "cache"
        else:
            cases, summary = rescore(store, earlier["run_id"], workflow, launch_dir)
            source = "evaluate"
    except Exception as e:
        log.warning("not a cache hit: %s: %s", type(e).__name__, e)
        return None
    return {"source": source, "eval_key": key, "compare": compare, "cases": cases,
            "summary": summary}


@dataclass
class Opened:
    """A job about to be recorded: where it runs from, its store and its identity."""

    store: Store
    paths: dict[str, Any]
    launch_dir: Path
    job_dir: Path
    overrides: list[str]
    sweep_id: str
    lock: list[str]
    inputs: str | None
    digests: dict[str, str]


def open_job(cfg: DictConfig, hc: DictConfig, lock: list[str] | None = None) -> Opened:
    """The store and identity of the job `cfg` (its task config) with Hydra config `hc`.
    `lock`: the env the job runs in, when it is not this process's. The caller closes
    `.store`; if this raises, the store is closed already."""
    launch_dir = Path(hc.runtime.cwd)
    # a planner sees the job before Hydra's run_job has set its output dir
    job_dir = Path(OmegaConf.select(hc, "runtime.output_dir", default=None)
                   or os.path.abspath(os.path.join(hc.sweep.dir, str(hc.sweep.subdir))))
    overrides = list(hc.overrides.task)
    store, paths = open_store_for(cfg, launch_dir)
    try:
        sweep_id = os.environ.get(SWEEP_ENV) or store.create_sweep(overrides)
        lock = installed() if lock is None else lock
        inputs = _commit_inputs(store, cfg, launch_dir)
        digests = identity_of(cfg, lock, inputs)
    except BaseException:
        store.close()
        raise
    return Opened(store, paths, launch_dir, job_dir, overrides, sweep_id, lock, inputs,
                  digests)


def record_start(job: Opened, cfg: DictConfig, hc: DictConfig, python: str = sys.executable,
                 env_id: str | None = None) -> str:
    return job.store.start_run(
        job.sweep_id,
        job_num=hc.job.get("num") or 0,
        overrides=job.overrides,
        workflow=hc.runtime.choices.get("workflow") or cfg.workflow.get("name"),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        config_digest=job.digests["config"],
        job_dir=str(job.job_dir),
        python=python,
        env_id=env_id,
        env_lock=job.lock,
        identity=job.digests,
        parent_run=_parent_of(job.store, cfg),
        launch_dir=os.environ.get(LAUNCH_DIR_ENV) or str(job.launch_dir),
        inputs_commit=job.inputs,
    )


def record_unopened(cfg: DictConfig, hc: DictConfig, error: str) -> None:
    """A failed run for a job that could not even be opened (its identity, its input files
    or the store raised): what is known of it, and the error."""
    launch_dir = Path(hc.runtime.cwd)
    store, _ = open_store_for(cfg, launch_dir)
    with store:
        try:
            config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        except Exception:  # an interpolation that does not resolve: keep it as written
            config_yaml = OmegaConf.to_yaml(cfg)
        sweep_id = os.environ.get(SWEEP_ENV) or store.create_sweep(list(hc.overrides.task))
        run_id = store.start_run(
            sweep_id, hc.job.get("num") or 0, list(hc.overrides.task),
            hc.runtime.choices.get("workflow"), config_yaml, "",
            os.path.abspath(os.path.join(hc.sweep.dir, str(hc.sweep.subdir))),
            launch_dir=os.environ.get(LAUNCH_DIR_ENV) or str(launch_dir))
        store.finish_run(run_id, "failed", None, {}, error)


def cache_hit(job: Opened, cfg: DictConfig, run_id: str | None = None,
              ) -> tuple[dict, dict] | None:
    """The earlier run this job would repeat, and its evaluation; None: the job must run.
    `run_id`: this job's own run; if the same job is running elsewhere, started earlier (two
    sweeps at once), this waits for it to end and reuses it rather than running it twice."""
    within = None  # any sweep's run will do
    if cfg.get("rerun"):
        if not os.environ.get(CONTINUES_ENV):
            return None
        within = os.environ[CONTINUES_ENV].split(",")
    if run_id is not None:
        _wait_for_twin(job.store, run_id, job.digests["job_key"])
    earlier = job.store.cached_run(job.digests["job_key"], within)
    if earlier and earlier["commit"] and (gone := job.store.missing_blobs(earlier["commit"])):
        log.warning("not a cache hit: run %s's files are not whole in the store (%d blobs "
                    "missing, e.g. %s; `wtb fsck` says more): it runs again",
                    earlier["run_id"][:8], len(gone), gone[0][:12])
        return None
    evaluation = _score_cached(job.store, earlier, cfg, job.launch_dir) if earlier else None
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


def record_cached(job: Opened, run_id: str, earlier: dict, evaluation: dict) -> dict[str, Any]:
    job.store.finish_cached(run_id, earlier, evaluation)  # scored first: run_cached ends its log
    return {"run_id": run_id, "status": "cached", "commit": earlier["commit"], "error": None,
            "metrics": earlier["metrics"], "cached_from": earlier["run_id"],
            "scores": evaluation["summary"]["scores"]}


def wants_env(env_cfg: Mapping[str, Any] | None) -> bool:
    """Whether a job's env group asks for its own interpreter (the default env does not).
    Here, not in wtb_conf.driver.envs: a job in an env's interpreter has no venv_manager to
    import."""
    return bool(env_cfg) and bool(env_cfg.get("packages") or env_cfg.get("python"))


def check_job(cfg: DictConfig) -> tuple[Any, dict[str, Any], dict, dict | None]:
    """What a job needs before it runs anything: its graph, plain workflow, evaluators and
    compare config. Raises the config error the job would fail with."""
    if wants_env(plain(cfg.get("env"))) and not os.environ.get(ENV_ID):
        # it would run in this interpreter, not the one its env asks for: a comparison of
        # package versions would compare nothing
        raise WorkflowError(
            "env: this job asks for its own interpreter (env.packages or env.python), but it "
            "runs in the driver's: only wtb_conf's planner (the default, hydra/launcher=wtb) "
            "provisions envs; drop hydra/launcher=basic or wtb_ray, or use env=default")
    return check_graph(cfg)


def check_graph(cfg: DictConfig, imports: bool = True, launch_dir: Path | None = None,
                ) -> tuple[Any, dict[str, Any], dict, dict | None]:
    """check_job but for where the job runs: also the sweep's check of every job's config at
    its start (wtb_conf.driver.preflight). `imports`: False for a job whose env is another
    interpreter (its targets import there, not here: everything else is checked, and the
    graph and evaluators returned are None). `launch_dir`: check the case input files
    (`file` / `text_file` fields) there; None: the nodes will say."""
    if problems := top_level_problems(cfg.keys()):
        raise WorkflowError("\n".join(problems))
    if "workflow" not in cfg:
        raise WorkflowError("workflow: none chosen; pick one: workflow=NAME "
                            "(conf/workflow/NAME.yaml)")
    graph = None
    if imports:
        graph = build_graph(cfg.workflow)
    else:
        check_workflow(cfg.workflow)
    workflow = plain(cfg.workflow)
    if problems := state_path_problems(workflow):
        raise WorkflowError("\n".join(problems))
    if cfg.get("fork") is not None:  # its run and checkpoint (and fork.after: which case ran
        # it) are looked up in the store when the job runs
        check(ForkConfig, cfg.fork, "fork", error=ForkError)
    evaluators = evaluators_of(workflow) if imports else None
    compare = check_compare(plain(cfg.get("compare")), workflow)
    cases = workflow.get("cases")
    if cfg.get("fork") is None and (not cases or not isinstance(cases, Mapping)):
        raise WorkflowError("workflow.cases: add at least one input case: `cases: {one: {}}`")
    if launch_dir is not None and (problems := case_file_problems(workflow, launch_dir)):
        raise WorkflowError("\n".join(problems))
    return graph, workflow, evaluators, compare


def record_failure(job: Opened, run_id: str, error: BaseException, out_dir: Path | None = None,
                   tb: str | None = None) -> dict[str, Any]:
    """Close a run as failed with `error` (raised just now, or `tb` its traceback); keep
    what it wrote to `out_dir`. A failure to keep it is logged, never the run's error."""
    message = clip_message(f"{type(error).__name__}: {error}")  # no 100 KB value in the store
    log.error("run %s failed: %s", run_id, message)
    tb = tb or "".join(traceback.format_exception(type(error), error, error.__traceback__))
    commit = None
    if out_dir is not None and out_dir.is_dir():  # keep what the failed run wrote
        try:
            commit = job.store.commit_dir(out_dir, message="final")
        except Exception as e:
            log.error("run %s: its files were not committed: %s: %s", run_id,
                      type(e).__name__, e)
            tb += f"\n(its files were not committed: {type(e).__name__}: {e})"
    job.store.finish_run(run_id, "failed", commit, {}, message, tb)
    return {"run_id": run_id, "status": "failed", "commit": commit, "error": message,
            "metrics": {}, "scores": None}
