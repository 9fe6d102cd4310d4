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
import json
import logging
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from langgraph.errors import InvalidUpdateError
from omegaconf import DictConfig

from wtb_conf import case_context
from wtb_conf.config.guards import Guards
from wtb_conf.job.admission import (
    ENV_ID,
    Opened,
    cache_hit,
    check_job,
    open_job,
    plain,
    record_cached,
    record_failure,
    record_start,
)
from wtb_conf.job.checkpointer import describe, open_checkpointer
from wtb_conf.job.fork import (
    ForkError,
    ForkPoint,
    base_key,
    copy_checkpoint,
    plan,
    prefix_key,
    shared_point,
)
from wtb_conf.job.scoring import eval_key, score_run
from wtb_conf.job.workflow import WorkflowError, breakpoints
from wtb_conf.store import Store

log = logging.getLogger(__name__)

OUT_DIR = "out"


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
    """`case/metric` for every case, plus `metric` = the mean over cases when numeric. A case
    whose final state has no value there (None, or the path ends early) is missing: its
    `case/metric` is null and the run has no mean (a mean over the other cases would rank
    the job on part of its cases); the log says which. (That the path's first part is a
    state field is checked before the sweep: wtb_conf.config.checks.)"""
    out: dict[str, Any] = {}
    for name, key in (spec or {}).items():
        values, missing = [], []
        for case, state in finals.items():
            out[f"{case}/{name}"] = value = _lookup(state, key)
            values.append(value)
            if value is None:
                missing.append(case)
        if missing:
            log.warning("metric %s (%s) is missing in case %s: no mean over the cases", name,
                        key, ", ".join(missing))
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
             launch_dir: Path, checkpoints: str = "", guards: Guards | None = None,
             ) -> tuple[str, dict[str, Any]]:
    """Run one input case as its own thread; commit and link after every checkpoint.
    Returns its status (completed, or paused at a breakpoint) and final state.
    `checkpoints`: where app's checkpointer is (storage.checkpoints), for messages.
    `guards`: the run's bounds (wtb_conf.config.guards), shared by its cases; default: this
    case's."""
    thread_id = f"{run_id}/{case.name}"
    fork = case.fork
    guards = guards or Guards.of(workflow)
    store.start_thread(run_id, thread_id, case.name, fork and vars(fork))
    config = {"configurable": {"thread_id": thread_id},
              "recursion_limit": guards.recursion_limit}
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
        stream_input = plain(case.inputs)
        if fork:
            store.restore(fork.commit, case.dir)
            copy_checkpoint(app.checkpointer, fork, thread_id,
                            describe(checkpoints) if checkpoints else "")
            link(fork.checkpoint_id, fork.step, "fork", [], fork.commit)
            store.log_event("fork", {"thread_id": thread_id, "from_thread": fork.thread_id,
                                     "checkpoint_id": fork.checkpoint_id}, run_id)
            if case.updates:  # as the node that ran last, so the next ones stay the same
                app.update_state(config, case.updates, as_node=fork.path[-1])
            stream_input = None  # continue from the copied checkpoint
        with case_context(case.dir, launch_dir):
            nodes: list[str] = []
            guards.start(case.name)
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
                guards.stored(case.name, step, bool(data.get("next")))  # may stop the case
        paused = case.pause or bool(app.get_state(config).next)
        status = "paused" if paused else "completed"
    except BaseException as e:  # Ctrl-C too: the thread says why it stopped
        named = _node_error(guards.explain(e, case.name), app, config)
        failure = {"error": f"{type(named).__name__}: {named}",
                   "traceback": traceback.format_exc()}
        if named is not e:
            raise named from e
        raise
    finally:
        final: dict[str, Any] = {}
        try:  # the state as far as it got; reading it must not replace the case's error
            snapshot = app.get_state(config)
            final = json_values(snapshot.values or {})
            if failure:  # the tasks still due at the newest checkpoint are the ones that failed
                failure["failed_node"] = ", ".join(snapshot.next) or None
        except Exception as e:
            if not failure:
                raise
            log.error("case %s: its state could not be read: %s: %s", case.name,
                      type(e).__name__, e)
        try:
            store.finish_thread(thread_id, status, final, parent, **failure)
        except Exception as e:
            if not failure:
                raise
            # the case's own error goes on up; the run's end marks this thread failed with it
            log.error("case %s: its failure was not recorded: %s: %s", case.name,
                      type(e).__name__, e)
    return status, final


def _node_error(error: BaseException, app: Any, config: dict) -> BaseException:
    """LangGraph's "Expected dict, got [2]" does not say which node returned it; this does
    (the node still due at the newest checkpoint)."""
    if not (isinstance(error, InvalidUpdateError)
            and "INVALID_GRAPH_NODE_RETURN_VALUE" in str(error)):
        return error
    try:
        node = ", ".join(app.get_state(config).next) or "?"
    except Exception:
        return error
    got = str(error).splitlines()[0].removeprefix("Expected dict, got ")
    return WorkflowError(f"workflow.nodes.{node}: the node returned {got[:200]}, not a dict: "
                         "a node returns a dict of the state fields it updates (or None)")


def case_dir(out_dir: Path, name: Any) -> Path:
    """out/<case>. A case's name is one directory name, and the last part of its thread id
    (`RUN/CASE`): '../../x' or 'a/b' would put its files outside the job's out/ directory."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise WorkflowError(f"workflow.cases: the case name {name!r} is not a plain directory "
                            "name; name cases with no '/', '\\' or NUL, and not '.' or '..'")
    return out_dir / name


def _cases(store: Store, cfg: DictConfig, workflow: dict[str, Any], digests: dict[str, str],
           out_dir: Path) -> list[Case]:
    """The job's cases: `workflow.cases`, or for a fork the parent's cases at their fork
    points; with shared prefixes on, a case starts from the deepest stored checkpoint that
    the same configs produced."""
    if cfg.get("fork") is not None:
        spec = plain(cfg.fork)
        if not isinstance(spec, Mapping):
            raise ForkError("fork: expected a mapping, e.g. +fork.run=RUN +fork.after=NODE")
        state = workflow.get("state")
        fork = plan(store, spec, list(state) if isinstance(state, Mapping) else None)
        out = [Case(name, None, case_dir(out_dir, name), point, fork.updates, fork.pause)
               for name, point in fork.points.items()]
        if fork.unstarted_from_input:
            out += [Case(name, inputs, case_dir(out_dir, name))
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
        out.append(Case(name, inputs, case_dir(out_dir, name), point, base_key=base))
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """The task function: run one job and record it. A failing workflow is recorded as a
    failed run and returned, not raised, so that the sweep goes on."""
    started = time.perf_counter()
    hc = HydraConfig.get()
    job = open_job(cfg, hc)
    try:
        # set by a planner for a job it provisioned an env for (wtb_conf.driver.planner)
        run_id = record_start(job, cfg, hc, env_id=os.environ.get(ENV_ID) or None)
        try:
            return _run(job, run_id, cfg, started)
        except Exception as e:  # recording the failure failed too (Ctrl-C: the sweep's end)
            with contextlib.suppress(Exception):  # best effort: the store may be the trouble
                job.store.fail_run(run_id, f"{type(e).__name__}: {e}", traceback.format_exc())
            raise
    finally:
        job.store.close()


def _run(job: Opened, run_id: str, cfg: DictConfig, started: float) -> dict[str, Any]:
    """Everything after the run is recorded as running, on one guarded path: whatever fails
    (setup, a node, the final commit, scoring), the run ends failed with the first error."""
    store, launch_dir = job.store, job.launch_dir
    out_dir = job.job_dir / OUT_DIR
    first_failure: tuple[str, BaseException, str] | None = None  # (case, error, traceback)
    try:
        hit = cache_hit(job, cfg, run_id)
        if hit is not None:
            result = record_cached(job, run_id, *hit)
            log.info("run %s: cached in %.0f ms, the same job completed as run %s", run_id,
                     (time.perf_counter() - started) * 1e3, hit[0]["run_id"])
            return result
        log.info("run %s: %s", run_id, " ".join(job.overrides) or "(no overrides)")
        finals: dict[str, dict] = {}
        statuses: list[str] = []
        graph, workflow, evaluators, compare = check_job(cfg)
        guards = Guards.of(workflow)  # one run's: max_checkpoints counts all its cases
        set_aside(out_dir)
        cases = _cases(store, cfg, workflow, job.digests, out_dir)
        with open_checkpointer(job.paths["checkpoints"]) as saver:  # (storage.checkpoints)
            app = graph.compile(checkpointer=saver, **breakpoints(cfg.workflow))
            for case in cases:  # a failing case is recorded on its thread; the others still run
                try:
                    status, finals[case.name] = run_case(store, run_id, app, case, workflow,
                                                         launch_dir, job.paths["checkpoints"],
                                                         guards)
                except Exception as e:
                    log.error("run %s: case %s failed: %s: %s", run_id, case.name,
                              type(e).__name__, e)
                    first_failure = first_failure or (case.name, e, traceback.format_exc())
                    status = "failed"
                statuses.append(status)
        try:
            commit = store.commit_dir(out_dir, message="final")
        except Exception as e:
            if first_failure is None:
                raise
            # the node's error is the run's: a failing commit must not replace it
            log.error("run %s: its files were not committed: %s: %s", run_id,
                      type(e).__name__, e)
            commit = None
        metrics = metrics_of(finals, plain(cfg.workflow.get("metrics")))
        summary = None
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
        if first_failure is not None:  # e.g. recording it failed: report the node's error
            name, exc, tb = first_failure
            return record_failure(job, run_id, exc, out_dir, f"case {name}:\n{tb}")
        return record_failure(job, run_id, e, out_dir)
    return {"run_id": run_id, "status": status, "commit": commit, "error": error,
            "metrics": metrics, "scores": summary and summary["scores"]}
