"""What one sweep job does: build the graph, run each input case, commit, record.

The job does not care which launcher runs it: everything it needs comes from its config
and Hydra's runtime config, and everything it produces goes to the store and its job dir.

Layout of a job's outputs (inside Hydra's job dir, e.g. multirun/<date>/<time>/<num>/):

    out/<case>/      the working directory of that case's nodes; committed after every
                     checkpoint and linked to it (out/<case>/<trial>/ with trials > 1:
                     wtb_conf.job.cases)
    out/             committed once at the end: the run's final commit
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from langgraph.errors import InvalidUpdateError
from omegaconf import DictConfig

from hydra_plugins.wtb_conf_launcher.plan import handoff
from wtb_conf import case_context
from wtb_conf.config.guards import Guards
from wtb_conf.job.admission import (
    Admission,
    admit,
    cache_hit,
    check_imports,
    check_interpreter,
    plain,
    record_cached,
    record_failure,
    record_start,
)
from wtb_conf.job.cases import Case, cases_of, set_aside
from wtb_conf.job.checkpointer import describe, open_checkpointer
from wtb_conf.job.fork import copy_checkpoint, prefix_key
from wtb_conf.job.scoring import metrics_of, score_run
from wtb_conf.job.workflow import WorkflowError, breakpoints
from wtb_conf.store import Store, store_at

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


@dataclass
class _Thread:
    """One case's thread as it runs: the path of nodes so far, its newest commit, and the
    checkpoints linked (LangGraph re-emits the one it resumes from)."""

    store: Store
    run_id: str
    case: Case
    workflow: Mapping[str, Any]
    path: list[str]
    parent: str | None  # the newest commit of the case's files
    linked: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return f"{self.run_id}/{self.case.name}"

    def link(self, cp_id: str, step: int, source: str, nodes: list[str], commit: str) -> None:
        keys = None
        if self.case.base_key:
            keys = (self.case.base_key, prefix_key(self.case.base_key, self.workflow,
                                                    self.path))
        self.store.link_checkpoint(self.run_id, self.id, "", cp_id, step, source, nodes,
                                   commit, self.path, keys)
        self.linked.add(cp_id)

    def fork(self, app: Any, config: dict, where: str) -> None:
        """Start from the stored checkpoint: its files, its checkpoint copied into this
        thread, and the fork's state updates."""
        fork = self.case.fork
        assert fork is not None
        self.store.restore(fork.commit, self.case.dir)
        copy_checkpoint(app.checkpointer, fork, self.id, where)
        self.link(fork.checkpoint_id, fork.step, "fork", [], fork.commit)
        self.store.log_event("fork", {"thread_id": self.id, "from_thread": fork.thread_id,
                                      "checkpoint_id": fork.checkpoint_id}, self.run_id)
        if self.case.updates:  # as the node that ran last, so the next ones stay the same
            app.update_state(config, self.case.updates, as_node=fork.path[-1])

    def stream(self, app: Any, stream_input: Any, config: dict, guards: Guards) -> None:
        """Run the graph; commit the case's files and link them after every checkpoint."""
        nodes: list[str] = []
        for mode, data in app.stream(stream_input, config,
                                     stream_mode=["updates", "checkpoints"], durability="sync"):
            if mode == "updates":
                for node in data:
                    if node.startswith("__"):  # __interrupt__: a breakpoint, not a node
                        continue
                    nodes.append(node)
                    self.path.append(node)
                    self.store.log_event("node", {"thread_id": self.id, "node": node},
                                         self.run_id)
                continue
            cp = data["config"]["configurable"]
            if cp["checkpoint_id"] in self.linked:
                continue
            meta = data["metadata"] or {}
            step = meta.get("step", -1)
            self.parent = self.store.commit_dir(self.case.dir, parent=self.parent,
                                                message=f"{self.case.name} step {step}")
            self.link(cp["checkpoint_id"], step, meta.get("source", ""), nodes, self.parent)
            nodes = []
            guards.stored(self.case.name, step, bool(data.get("next")))  # may stop the case

    def end(self, app: Any, config: dict, status: str, failure: dict[str, Any]) -> dict:
        """Record how the thread ended, with its state as far as it got; with a `failure`,
        reading or recording that must not replace the case's own error."""
        final: dict[str, Any] = {}
        try:
            snapshot = app.get_state(config)
            final = json_values(snapshot.values or {})
            if failure:  # the tasks still due at the newest checkpoint are the ones that failed
                failure["failed_node"] = ", ".join(snapshot.next) or None
        except Exception as e:
            if not failure:
                raise
            log.error("case %s: its state could not be read: %s: %s", self.case.name,
                      type(e).__name__, e)
        try:
            self.store.finish_thread(self.id, status, final, self.parent, **failure)
        except Exception as e:
            if not failure:
                raise
            # the case's own error goes on up; the run's end marks this thread failed with it
            log.error("case %s: its failure was not recorded: %s: %s", self.case.name,
                      type(e).__name__, e)
        return final


def run_case(store: Store, run_id: str, app: Any, case: Case, workflow: Mapping[str, Any],
             launch_dir: Path, checkpoints: str = "", guards: Guards | None = None,
             ) -> tuple[str, dict[str, Any]]:
    """Run one input case as its own thread; commit and link after every checkpoint.
    Returns its status (completed, or paused at a breakpoint) and final state.
    `checkpoints`: where app's checkpointer is (storage.checkpoints), for messages.
    `guards`: the run's bounds (wtb_conf.config.guards), shared by its cases; default: this
    case's."""
    guards = guards or Guards.of(workflow)
    fork = case.fork
    thread = _Thread(store, run_id, case, workflow, list(fork.path) if fork else [],
                     fork.commit if fork else None)
    store.start_thread(run_id, thread.id, case.name, fork and vars(fork))
    config = {"configurable": {"thread_id": thread.id},
              "recursion_limit": guards.recursion_limit}
    status, failure = "failed", {}
    try:
        stream_input = plain(case.inputs)
        if fork:
            thread.fork(app, config, describe(checkpoints) if checkpoints else "")
            stream_input = None  # continue from the copied checkpoint
        with case_context(case.dir, launch_dir, case.trial):
            guards.start(case.name)
            if not case.pause:
                thread.stream(app, stream_input, config, guards)
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
        final = thread.end(app, config, status, failure)
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """The task function: run one job and record it. A failing workflow is recorded as a
    failed run and returned, not raised, so that the sweep goes on. The job's Admission is
    the planner's, handed over with its plan; where no planner ran, the job admits itself."""
    started = time.perf_counter()
    job = handoff()
    if isinstance(job, Admission):
        # where run_job put the job here: on a node with a disk of its own (shared_disk=false)
        # that is the node's dir, not the one the planner saw in the driver
        job = replace(job, job_dir=Path(HydraConfig.get().runtime.output_dir))
        store = store_at(job.storage)
    else:
        job, store = admit(cfg, HydraConfig.get())
    try:
        run_id = record_start(store, job)
        try:
            return _run(store, job, run_id, started)
        except Exception as e:  # recording the failure failed too (Ctrl-C: the sweep's end)
            with contextlib.suppress(Exception):  # best effort: the store may be the trouble
                store.fail_run(run_id, f"{type(e).__name__}: {e}", traceback.format_exc())
            raise
    finally:
        store.close()


@dataclass
class _Outcome:
    """What a run's cases came to: their final states and statuses, the first failure."""

    finals: dict[str, dict] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    failure: tuple[str, BaseException, str] | None = None  # (case, error, traceback)


def _run(store: Store, job: Admission, run_id: str, started: float) -> dict[str, Any]:
    """Everything after the run is recorded as running, on one guarded path: whatever fails
    (setup, a node, the final commit, scoring), the run ends failed with the first error."""
    out_dir = job.job_dir / OUT_DIR
    outcome = _Outcome()
    try:
        if job.config is None:
            raise job.error or WorkflowError("the job's config was not checked")
        hit = cache_hit(store, job, run_id)
        if hit is not None:
            result = record_cached(store, run_id, *hit)
            log.info("run %s: cached in %.0f ms, the same job completed as run %s", run_id,
                     (time.perf_counter() - started) * 1e3, hit[0]["run_id"])
            return result
        log.info("run %s: %s", run_id, " ".join(job.overrides) or "(no overrides)")
        check_interpreter(job)
        graph, evaluators = check_imports(job.config)
        set_aside(out_dir)
        _run_cases(store, job, run_id, graph, out_dir, outcome)
        return _finish(store, job, run_id, evaluators, out_dir, outcome)
    except Exception as e:
        if outcome.failure is not None:  # e.g. recording it failed: report the node's error
            name, exc, tb = outcome.failure
            return record_failure(store, run_id, exc, out_dir, f"case {name}:\n{tb}")
        return record_failure(store, run_id, e, out_dir)


def _run_cases(store: Store, job: Admission, run_id: str, graph: Any, out_dir: Path,
               outcome: _Outcome) -> None:
    """Each case as its own thread, with LangGraph's checkpointer (storage.checkpoints); a
    failing case is recorded on its thread and the others still run."""
    config = job.config
    assert config is not None
    guards = Guards.of(config.data)  # one run's: max_checkpoints counts all its cases
    cases = cases_of(store, config, job.digests, out_dir)
    where = job.storage.checkpoints
    with open_checkpointer(where) as saver:
        app = graph.compile(checkpointer=saver, **breakpoints(config.workflow))
        for case in cases:
            try:
                status, outcome.finals[case.name] = run_case(
                    store, run_id, app, case, config.data, job.launch_dir, where, guards)
            except Exception as e:
                log.error("run %s: case %s failed: %s: %s", run_id, case.name,
                          type(e).__name__, e)
                outcome.failure = outcome.failure or (case.name, e, traceback.format_exc())
                status = "failed"
            outcome.statuses.append(status)


def _finish(store: Store, job: Admission, run_id: str, evaluators: list, out_dir: Path,
            outcome: _Outcome) -> dict[str, Any]:
    """The run's final commit, metrics and scores, and its end."""
    config = job.config
    assert config is not None
    try:
        commit = store.commit_dir(out_dir, message="final")
    except Exception as e:
        if outcome.failure is None:
            raise
        # the node's error is the run's: a failing commit must not replace it
        log.error("run %s: its files were not committed: %s: %s", run_id,
                  type(e).__name__, e)
        commit = None
    metrics = metrics_of(outcome.finals, config.data.get("metrics"))
    summary = None
    try:  # evaluators' own errors are values; this guards the run against the rest
        case_scores, summary = score_run(evaluators, config.data, store.threads(run_id),
                                         out_dir.joinpath, job.launch_dir)
        store.add_evaluation(run_id, "run", config.eval_key, config.compare, case_scores,
                             summary)
    except Exception as e:
        log.error("run %s: not scored (`wtb evaluate %s` scores it again): %s: %s", run_id,
                  run_id[:8], type(e).__name__, e)
    if outcome.failure is not None:
        name, exc, tb = outcome.failure
        error = f"{type(exc).__name__}: {exc}"
        status = "failed"
        store.finish_run(run_id, status, commit, metrics, error, f"case {name}:\n{tb}")
    else:
        status, error = ("paused" if "paused" in outcome.statuses else "completed"), None
        store.finish_run(run_id, status, commit, metrics)
    return {"run_id": run_id, "status": status, "commit": commit, "error": error,
            "metrics": metrics, "scores": summary and summary["scores"]}
