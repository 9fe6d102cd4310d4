"""What one sweep job does: build the graph, run each input case, commit, record.

The job does not care which launcher runs it: everything it needs comes from its config
and Hydra's runtime config, and everything it produces goes to the store and its job dir.

Layout of a job's outputs (inside Hydra's job dir, e.g. multirun/<date>/<time>/<num>/):

    out/<case>/      the working directory of that case's nodes; committed after every
                     checkpoint and linked to it
    out/             committed once at the end: the run's final commit
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from omegaconf import DictConfig, OmegaConf

from wtb_conf import case_context
from wtb_conf.fork import (
    ForkError,
    ForkPoint,
    base_key,
    copy_checkpoint,
    plan,
    prefix_key,
    shared_point,
)
from wtb_conf.identity import identity_of, input_files
from wtb_conf.scoring import check_compare, eval_key, evaluators_of, rescore, score_run
from wtb_conf.store import Store, StoreError, open_store
from wtb_conf.workflow import WorkflowError, breakpoints, build_graph

log = logging.getLogger(__name__)

SWEEP_ENV = "WTB_SWEEP_ID"  # set by the sweep callback in the driver; jobs file under it
ENV_ID = "WTB_ENV_ID"  # set by the planner for a job that runs in a venv_manager env
OUT_DIR = "out"


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


def storage_paths(storage: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """The storage group with relative paths resolved against `base` (the launch dir)."""

    def path(p: str) -> str:
        return str(p if os.path.isabs(p) else base / p)

    db_url = storage["db_url"]
    prefix = "sqlite:///"
    if db_url.startswith(prefix) and db_url[len(prefix):] not in ("", ":memory:"):
        db_url = prefix + path(db_url[len(prefix):])
    return {
        "db_url": db_url,
        "blob_root": path(storage["blob_root"]),
        "checkpoints": path(storage["checkpoints"]),
        "inline_max": int(storage["inline_max"]),
    }


def open_store_for(cfg: DictConfig, base: Path) -> tuple[Store, dict[str, Any]]:
    paths = storage_paths(cfg.storage, base)
    return open_store(paths["db_url"], paths["blob_root"], paths["inline_max"]), paths


def json_values(state: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serializable entries of a state (others are left out, not stringified)."""
    out = {}
    for key, value in state.items():
        try:
            out[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return out


def _lookup(state: Mapping[str, Any], dotted: str) -> Any:
    value: Any = state
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def metrics_of(finals: dict[str, dict], spec: Mapping[str, str] | None) -> dict[str, Any]:
    """`case/metric` for every case, plus `metric` = the mean over cases when numeric."""
    out: dict[str, Any] = {}
    for name, key in (spec or {}).items():
        values = []
        for case, state in finals.items():
            out[f"{case}/{name}"] = value = _lookup(state, key)
            values.append(value)
        numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numeric and len(numeric) == len(values):
            out[name] = sum(numeric) / len(numeric)
    return out


@dataclass
class Case:
    """One input case of a job, and where its thread starts."""

    name: str
    inputs: Any
    dir: Path  # its output dir
    fork: ForkPoint | None = None  # start from this stored checkpoint instead of `inputs`
    updates: dict[str, Any] = field(default_factory=dict)  # applied to the state after forking
    pause: bool = False  # after forking, stop before running anything (rollback)
    base_key: str | None = None  # shared prefixes: links get prefix keys under this base


def run_case(store: Store, run_id: str, app: Any, case: Case, workflow: Mapping[str, Any],
             launch_dir: Path) -> tuple[str, dict[str, Any]]:
    """Run one input case as its own thread; commit and link after every checkpoint.
    Returns its status (completed, or paused at a breakpoint) and final state."""
    thread_id = f"{run_id}/{case.name}"
    fork = case.fork
    store.start_thread(run_id, thread_id, case.name, fork and vars(fork))
    config = {"configurable": {"thread_id": thread_id}}
    path = list(fork.path) if fork else []
    parent = fork.commit if fork else None
    linked: set[str] = set()
    status = "failed"
    failure: dict[str, Any] = {}

    def link(cp_id: str, step: int, source: str, nodes: list[str], commit: str) -> None:
        keys = None
        if case.base_key:
            keys = (case.base_key, prefix_key(case.base_key, workflow, path))
        store.link_checkpoint(run_id, thread_id, "", cp_id, step, source, nodes, commit, path,
                              keys)
        linked.add(cp_id)

    try:
        stream_input = _plain(case.inputs)
        if fork:
            store.restore(fork.commit, case.dir)
            copy_checkpoint(app.checkpointer, fork, thread_id)
            link(fork.checkpoint_id, fork.step, "fork", [], fork.commit)
            store.log_event("fork", {"thread_id": thread_id, "from_thread": fork.thread_id,
                                     "checkpoint_id": fork.checkpoint_id}, run_id)
            if case.updates:  # as the node that ran last, so the next ones stay the same
                app.update_state(config, case.updates, as_node=fork.path[-1])
            stream_input = None  # continue from the copied checkpoint
        with case_context(case.dir, launch_dir):
            nodes: list[str] = []
            stream = () if case.pause else app.stream(
                stream_input, config, stream_mode=["updates", "checkpoints"], durability="sync"
            )
            for mode, data in stream:
                if mode == "updates":
                    for node in data:
                        if node.startswith("__"):  # __interrupt__: a breakpoint, not a node
                            continue
                        nodes.append(node)
                        path.append(node)
                        store.log_event("node", {"thread_id": thread_id, "node": node}, run_id)
                    continue
                cp = data["config"]["configurable"]
                if cp["checkpoint_id"] in linked:  # LangGraph re-emits the one it resumes from
                    continue
                meta = data["metadata"] or {}
                step = meta.get("step", -1)
                parent = store.commit_dir(case.dir, message=f"{case.name} step {step}",
                                          parent=parent)
                link(cp["checkpoint_id"], step, meta.get("source", ""), nodes, parent)
                nodes = []
        paused = case.pause or bool(app.get_state(config).next)
        status = "paused" if paused else "completed"
    except Exception as e:
        failure = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        raise
    finally:
        snapshot = app.get_state(config)
        final = json_values(snapshot.values or {})
        if failure:  # the tasks still due at the newest checkpoint are the ones that failed
            failure["failed_node"] = ", ".join(snapshot.next) or None
        store.finish_thread(thread_id, status, final, parent, **failure)
    return status, final


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _commit_inputs(store: Store, cfg: DictConfig, launch_dir: Path) -> str | None:
    """Commit the input files the cases name (part of the job's identity), if any."""
    files = input_files(_plain(cfg.workflow.get("cases")), launch_dir)
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


def _cases(store: Store, cfg: DictConfig, workflow: dict[str, Any], digests: dict[str, str],
           out_dir: Path) -> list[Case]:
    """The job's cases: `workflow.cases`, or for a fork the parent's cases at their fork
    points; with shared prefixes on, a case starts from the deepest stored checkpoint that
    the same configs produced."""
    if cfg.get("fork") is not None:
        spec = _plain(cfg.fork)
        if not isinstance(spec, Mapping):
            raise ForkError("fork: expected a mapping, e.g. +fork.run=RUN +fork.after=NODE")
        state = workflow.get("state")
        fork = plan(store, spec, list(state) if isinstance(state, Mapping) else None)
        out = [Case(name, None, out_dir / name, point, fork.updates, fork.pause)
               for name, point in fork.points.items()]
        if fork.unstarted_from_input:
            out += [Case(name, inputs, out_dir / name)
                    for name, inputs in (workflow.get("cases") or {}).items()
                    if name not in fork.points]
        return out
    cases = workflow["cases"]  # check_job made sure there are some
    # A job with breakpoints is not shared: continuing from a stored checkpoint is a resume to
    # LangGraph, which would run past the breakpoint the other job stopped at.
    share = (cfg.get("share_prefixes", True) and not cfg.get("rerun")
             and not breakpoints(workflow))
    out = []
    for name, inputs in cases.items():
        base = base_key(workflow, [inputs, digests["inputs"]], digests["env_digest"],
                        digests["code_digest"])
        point = shared_point(store, base, workflow) if share else None
        out.append(Case(name, inputs, out_dir / name, point, base_key=base))
    return out


def _score_cached(store: Store, earlier: dict[str, Any], cfg: DictConfig,
                  launch_dir: Path) -> dict[str, Any] | None:
    """The evaluation of a cache hit: the earlier run's newest one if the same evaluators
    made it, else its stored cases scored again (nothing runs). None when that fails (the
    evaluators' config is wrong, a stored case cannot be restored): the job then runs as
    usual, and reports a config error itself."""
    workflow = _plain(cfg.workflow)
    try:
        compare = check_compare(_plain(cfg.get("compare")), workflow)
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
    `lock`: the env the job runs in, when it is not this process's."""
    launch_dir = Path(hc.runtime.cwd)
    # a planner sees the job before Hydra's run_job has set its output dir
    job_dir = Path(OmegaConf.select(hc, "runtime.output_dir", default=None)
                   or os.path.abspath(os.path.join(hc.sweep.dir, str(hc.sweep.subdir))))
    overrides = list(hc.overrides.task)
    store, paths = open_store_for(cfg, launch_dir)
    sweep_id = os.environ.get(SWEEP_ENV) or store.create_sweep(overrides)
    lock = installed() if lock is None else lock
    inputs = _commit_inputs(store, cfg, launch_dir)
    return Opened(store, paths, launch_dir, job_dir, overrides, sweep_id, lock, inputs,
                  identity_of(cfg, lock, inputs))


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
        launch_dir=str(job.launch_dir),
        inputs_commit=job.inputs,
    )


def cache_hit(job: Opened, cfg: DictConfig) -> tuple[dict, dict] | None:
    """The earlier run this job would repeat, and its evaluation; None: the job must run."""
    if cfg.get("rerun"):
        return None
    earlier = job.store.cached_run(job.digests["job_key"])
    evaluation = _score_cached(job.store, earlier, cfg, job.launch_dir) if earlier else None
    return (earlier, evaluation) if evaluation is not None else None


def record_cached(job: Opened, run_id: str, earlier: dict, evaluation: dict) -> dict[str, Any]:
    job.store.finish_cached(run_id, earlier)
    job.store.add_evaluation(run_id, **evaluation)
    return {"run_id": run_id, "status": "cached", "commit": earlier["commit"], "error": None,
            "metrics": earlier["metrics"], "cached_from": earlier["run_id"],
            "scores": evaluation["summary"]["scores"]}


def check_job(cfg: DictConfig) -> tuple[Any, dict[str, Any], dict, dict | None]:
    """What a job needs before it runs anything: its graph, plain workflow, evaluators and
    compare config. Raises the config error the job would fail with."""
    graph = build_graph(cfg.workflow)
    workflow = _plain(cfg.workflow)
    evaluators = evaluators_of(workflow)
    compare = check_compare(_plain(cfg.get("compare")), workflow)
    cases = workflow.get("cases")
    if cfg.get("fork") is None and (not cases or not isinstance(cases, Mapping)):
        raise WorkflowError("workflow.cases: add at least one input case: `cases: {one: {}}`")
    return graph, workflow, evaluators, compare


def record_failure(job: Opened, run_id: str, error: BaseException, out_dir: Path | None = None,
                   ) -> dict[str, Any]:
    """Close a run as failed with `error` (raised just now); keep what it wrote to `out_dir`."""
    message = f"{type(error).__name__}: {error}"
    log.error("run %s failed: %s", run_id, message)
    commit = None
    if out_dir is not None and out_dir.is_dir():  # keep what the failed run wrote
        commit = job.store.commit_dir(out_dir, message="final")
    job.store.finish_run(run_id, "failed", commit, {}, message, traceback.format_exc())
    return {"run_id": run_id, "status": "failed", "commit": commit, "error": message,
            "metrics": {}, "scores": None}


def run(cfg: DictConfig) -> dict[str, Any]:
    """The task function: run one job and record it. A failing workflow is recorded as a
    failed run and returned, not raised, so that the sweep goes on."""
    started = time.perf_counter()
    hc = HydraConfig.get()
    job = open_job(cfg, hc)
    # set by a planner for a job it provisioned an env for (wtb_conf.planner)
    run_id = record_start(job, cfg, hc, env_id=os.environ.get(ENV_ID) or None)
    store, paths, launch_dir, overrides = job.store, job.paths, job.launch_dir, job.overrides
    out_dir = job.job_dir / OUT_DIR
    hit = cache_hit(job, cfg)
    if hit is not None:
        result = record_cached(job, run_id, *hit)
        store.close()
        log.info("run %s: cached in %.0f ms, the same job completed as run %s", run_id,
                 (time.perf_counter() - started) * 1e3, hit[0]["run_id"])
        return result
    log.info("run %s: %s", run_id, " ".join(overrides) or "(no overrides)")
    commit = None
    finals: dict[str, dict] = {}
    statuses: list[str] = []
    summary = None
    try:
        graph, workflow, evaluators, compare = check_job(cfg)
        cases = _cases(store, cfg, workflow, job.digests, out_dir)
        Path(paths["checkpoints"]).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(paths["checkpoints"], check_same_thread=False, timeout=60)
        first_failure: tuple[str, BaseException, str] | None = None
        with contextlib.closing(conn):
            app = graph.compile(checkpointer=SqliteSaver(conn), **breakpoints(cfg.workflow))
            for case in cases:  # a failing case is recorded on its thread; the others still run
                try:
                    status, finals[case.name] = run_case(store, run_id, app, case, workflow,
                                                         launch_dir)
                except Exception as e:
                    log.error("run %s: case %s failed: %s: %s", run_id, case.name,
                              type(e).__name__, e)
                    first_failure = first_failure or (case.name, e, traceback.format_exc())
                    status = "failed"
                statuses.append(status)
        commit = store.commit_dir(out_dir, message="final")
        metrics = metrics_of(finals, _plain(cfg.workflow.get("metrics")))
        try:  # evaluators' own errors are values; this guards the run against the rest
            case_scores, summary = score_run(evaluators, workflow, store.threads(run_id),
                                             out_dir.joinpath, launch_dir)
            store.add_evaluation(run_id, "run", eval_key(workflow), compare, case_scores,
                                 summary)
        except Exception as e:
            log.error("run %s: not scored (`wtb evaluate %s` scores it again): %s: %s", run_id,
                      run_id[:8], type(e).__name__, e)
        if first_failure is not None:
            name, exc, tb = first_failure
            error = f"{type(exc).__name__}: {exc}"
            status = "failed"
            store.finish_run(run_id, status, commit, metrics, error, f"case {name}:\n{tb}")
        else:
            status, error = ("paused" if "paused" in statuses else "completed"), None
            store.finish_run(run_id, status, commit, metrics)
    except Exception as e:
        return record_failure(job, run_id, e, out_dir)
    finally:
        store.close()
    return {"run_id": run_id, "status": status, "commit": commit, "error": error,
            "metrics": metrics, "scores": summary and summary["scores"]}
