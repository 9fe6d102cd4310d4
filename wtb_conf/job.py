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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from omegaconf import DictConfig, OmegaConf

import wtb_conf
from wtb_conf.identity import identity_of
from wtb_conf.store import Store, open_store
from wtb_conf.workflow import WorkflowError, build_graph

log = logging.getLogger(__name__)

SWEEP_ENV = "WTB_SWEEP_ID"  # set by the sweep callback in the driver; jobs file under it
OUT_DIR = "out"


@functools.cache
def installed() -> list[str]:
    """`name==version` of every distribution on sys.path: the job's env lock. Read from the
    `.dist-info` / `.egg-info` directory names (importlib.metadata parses every METADATA file,
    ~120 ms here, which a job-cache hit cannot afford); computed once per process."""
    found = set()
    for entry in sys.path:
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


@contextlib.contextmanager
def case_context(case_dir: Path, launch_dir: Path) -> Iterator[None]:
    """Nodes run with the case's output dir as working directory and as output_dir()."""
    case_dir.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    wtb_conf._current.update(output_dir=case_dir, launch_dir=launch_dir)
    os.chdir(case_dir)
    try:
        yield
    finally:
        os.chdir(old)
        wtb_conf._current.pop("output_dir", None)


def run_case(
    store: Store, run_id: str, graph: Any, case: str, inputs: Any, case_dir: Path, launch_dir: Path
) -> dict[str, Any]:
    """Run one input case as its own thread; commit and link after every checkpoint."""
    thread_id = f"{run_id}/{case}"
    store.start_thread(run_id, thread_id, case)
    config = {"configurable": {"thread_id": thread_id}}
    parent: str | None = None
    nodes: list[str] = []
    status = "failed"
    try:
        with case_context(case_dir, launch_dir):
            stream = graph.stream(
                _plain(inputs), config, stream_mode=["updates", "checkpoints"], durability="sync"
            )
            for mode, data in stream:
                if mode == "updates":
                    for node in data:
                        nodes.append(node)
                        store.log_event("node", {"thread_id": thread_id, "node": node}, run_id)
                    continue
                cp = data["config"]["configurable"]
                meta = data["metadata"] or {}
                step = meta.get("step", -1)
                parent = store.commit_dir(case_dir, message=f"{case} step {step}", parent=parent)
                store.link_checkpoint(
                    run_id, thread_id, cp.get("checkpoint_ns", ""), cp["checkpoint_id"], step,
                    meta.get("source", ""), nodes, parent,
                )
                nodes = []
        status = "completed"
    finally:
        snapshot = graph.get_state(config)
        final = json_values(snapshot.values or {})
        store.finish_thread(thread_id, status, final, parent)
    return final


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run(cfg: DictConfig) -> dict[str, Any]:
    """The task function: run one job and record it. A failing workflow is recorded as a
    failed run and returned, not raised, so that the sweep goes on."""
    started = time.perf_counter()
    hc = HydraConfig.get()
    launch_dir = Path(hc.runtime.cwd)
    job_dir = Path(hc.runtime.output_dir)
    out_dir = job_dir / OUT_DIR
    overrides = list(hc.overrides.task)
    store, paths = open_store_for(cfg, launch_dir)
    sweep_id = os.environ.get(SWEEP_ENV) or store.create_sweep(overrides)
    lock = installed()
    digests = identity_of(cfg, lock)
    run_id = store.start_run(
        sweep_id,
        job_num=hc.job.get("num") or 0,
        overrides=overrides,
        workflow=hc.runtime.choices.get("workflow"),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        config_digest=digests["config"],
        job_dir=str(job_dir),
        python=sys.executable,
        env_id=os.environ.get("WTB_ENV_ID") or None,  # set by wtb_ray for a provisioned env
        env_lock=lock,
        identity=digests,
    )
    earlier = None if cfg.get("rerun") else store.cached_run(digests["job_key"])
    if earlier is not None:
        store.finish_cached(run_id, earlier)
        store.close()
        log.info("run %s: cached in %.0f ms, the same job completed as run %s", run_id,
                 (time.perf_counter() - started) * 1e3, earlier["run_id"])
        return {"run_id": run_id, "status": "cached", "commit": earlier["commit"],
                "error": None, "metrics": earlier["metrics"], "cached_from": earlier["run_id"]}
    log.info("run %s: %s", run_id, " ".join(overrides) or "(no overrides)")
    commit = None
    finals: dict[str, dict] = {}
    try:
        graph = build_graph(cfg.workflow)
        cases = cfg.workflow.get("cases")
        if not cases:
            raise WorkflowError("workflow.cases: add at least one input case: `cases: {one: {}}`")
        Path(paths["checkpoints"]).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(paths["checkpoints"], check_same_thread=False, timeout=60)
        with contextlib.closing(conn):
            app = graph.compile(checkpointer=SqliteSaver(conn))
            for case, inputs in cases.items():
                finals[case] = run_case(
                    store, run_id, app, case, inputs, out_dir / case, launch_dir
                )
        commit = store.commit_dir(out_dir, message="final")
        metrics = metrics_of(finals, _plain(cfg.workflow.get("metrics")))
        store.finish_run(run_id, "completed", commit, metrics)
        status, error = "completed", None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        log.error("run %s failed: %s", run_id, error)
        if out_dir.is_dir():  # keep what the failed run wrote
            commit = store.commit_dir(out_dir, message="final")
        metrics = {}
        store.finish_run(run_id, "failed", commit, metrics, error, traceback.format_exc())
        status = "failed"
    finally:
        store.close()
    return {"run_id": run_id, "status": status, "commit": commit, "error": error,
            "metrics": metrics}
