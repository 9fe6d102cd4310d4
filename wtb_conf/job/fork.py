"""Time travel: start a case thread from a checkpoint that an earlier run stored.

A fork copies the parent thread's LangGraph checkpoint into the new run's own thread (with
the checkpointer's own put / put_writes, so LangGraph continues it as if it had stopped
there) and restores the commit linked to that checkpoint into the case's output directory.
Fork (`+fork.run=...`), rollback, resume and shared prefixes are this one operation with a
different choice of checkpoint. The `fork:` config keys are documented in docs/config.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from wtb_conf.config.models import ForkConfig
from wtb_conf.config.values import id_override
from wtb_conf.job.identity import json_digest
from wtb_conf.store import Store, StoreError

FORK_KEYS = tuple(ForkConfig.keys())  # (the model: wtb_conf.config.models.ForkConfig)


class ForkError(ValueError):
    """A `fork:` config that names no usable checkpoint; the message names the key."""


@dataclass(frozen=True)
class ForkPoint:
    """A stored checkpoint a case starts from."""

    run_id: str
    thread_id: str
    checkpoint_id: str
    step: int
    commit: str
    path: list[str]  # every node run up to the checkpoint, in order, inherited ones included


@dataclass
class Fork:
    """What `fork:` asks for: a start point per case, state updates, and whether to stop."""

    parent_run: str
    points: dict[str, ForkPoint]
    updates: dict[str, Any] = field(default_factory=dict)
    pause: bool = False
    # a resume of a run meant to run every case (not a one-case rollback): the cases it never
    # started (it failed before them) start from their input
    unstarted_from_input: bool = False


def _points(store: Store, run_id: str) -> list[tuple[str, ForkPoint]]:
    """(case, point) for every checkpoint of a run, by case and step."""
    threads = {t["thread_id"]: t for t in store.threads(run_id)}
    out, path, current = [], [], None
    for link in store.checkpoints(run_id):
        if link["thread_id"] != current:
            current = link["thread_id"]
            path = list(threads[current]["inherited"])
        path = path + link["nodes"]
        out.append((link["case"], ForkPoint(run_id, link["thread_id"], link["checkpoint_id"],
                                            link["step"], link["commit"], path)))
    return out


def plan(store: Store, fork: ForkConfig, state_fields: list[str] | None) -> Fork:
    """Check a `fork:` config (validated) against the store and pick each case's
    checkpoint."""
    try:
        run = store.run(store.resolve("runs", fork.run))
    except StoreError as e:
        raise ForkError(f"fork.run: {e}") from None
    if run["status"] == "cached":  # a cache hit ran nothing: its source run has the threads
        run = store.run(run["cached_from"])
    if run["status"] == "running":
        raise ForkError(f"fork.run: run {run['run_id'][:8]} is still running")
    points = _points(store, run["run_id"])
    if not points:
        raise ForkError(f"fork.run: run {run['run_id'][:8]} stored no checkpoints to fork from")
    chosen: dict[str, ForkPoint] = {}
    cp, after = fork.checkpoint, fork.after
    if cp is not None:
        matches = [(c, p) for c, p in points if p.checkpoint_id.startswith(cp)]
        if len(matches) != 1:
            raise ForkError(
                f"fork.checkpoint: {len(matches) or 'no'} checkpoints of run "
                f"{run['run_id'][:8]} match {cp!r}; list them with `wtb show {run['run_id'][:8]}`"
            )
        chosen = dict(matches)
    elif after is not None:
        chosen = _after(store, run["run_id"], after)
    else:  # resume: each case from its newest checkpoint
        chosen = dict(points)
    updates = fork.set or {}
    for key in updates:
        if state_fields is not None and key not in state_fields:
            raise ForkError(f"fork.set.{key}: not a state field; the state has "
                            f"{', '.join(state_fields)}")
    if updates and any(not p.path for p in chosen.values()):
        raise ForkError("fork.set: a checkpoint before any node ran holds the case's input, "
                        "not a state to change; fork from a later checkpoint, or change the "
                        "input (workflow.cases)")
    resume = cp is None and after is None
    every_case = OmegaConf.select(OmegaConf.create(run["config_yaml"]), "fork.checkpoint") is None
    return Fork(run["run_id"], chosen, dict(updates), fork.pause, resume and every_case)


def _first_run(thread: dict[str, Any], links: list[dict[str, Any]], node: str,
               upto: str | None) -> ForkPoint | None:
    """The thread's checkpoint of the step that ran `node` itself, the first time, among its
    links up to checkpoint `upto` (None: all of them)."""
    path = list(thread["inherited"])
    for link in links:
        path = path + link["nodes"]
        if node in link["nodes"]:
            return ForkPoint(link["run_id"], thread["thread_id"], link["checkpoint_id"],
                             link["step"], link["commit"], path)
        if link["checkpoint_id"] == upto:
            break
    return None


# thread id -> (its run, the thread, its links in step order)
_Records = dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]]


def _where_it_ran(records: _Records, read_thread: Callable[[str], None], run_id: str, case: str,
                  node: str, thread_id: str
                  ) -> tuple[str, dict[str, Any], list[dict[str, Any]], str | None]:
    """The thread in which case `case` ran `node` itself: up the `parent_thread`s from
    `thread_id` while the thread inherited `node` (reading each with `read_thread` into
    `records`). Returns its run, the thread, its links, and the checkpoint the child was
    copied from (None: `node` was not inherited, all the thread's links count)."""
    source, thread, links = records[thread_id]
    upto, seen = None, {thread_id}
    while node in thread["inherited"]:  # it did not run here: up to where it ran
        parent = thread["parent_thread"]
        if parent:
            read_thread(parent)
        if not parent or parent not in records or parent in seen:
            where = ("a checkpoint the store does not name" if not parent
                     else f"thread {parent}, which this store does not hold"
                     if parent not in records else f"thread {parent}, in a loop of threads")
            raise ForkError(
                f"fork.after: case {case!r} of run {run_id[:8]} inherited node {node!r} "
                f"from {where}; fork one of the run's own checkpoints instead: "
                f"{id_override('fork.run', run_id[:8], typed=True)} +fork.checkpoint=CP "
                f"(`wtb show {run_id[:8]}`)")
        seen.add(parent)
        upto = thread["parent_checkpoint"]
        source, thread, links = records[parent]
    return source, thread, links, upto


def _after(store: Store, run_id: str, node: str) -> dict[str, ForkPoint]:
    """`fork.after`: each case's checkpoint right after `node` first ran.

    A case that inherited `node` (a resume, a replay of one, a shared prefix, a fork: its
    thread was copied from a checkpoint past `node`) has no such checkpoint of its own: its
    first link is the copied one, after every inherited node. The checkpoint is in the thread
    it was copied from (`parent_thread`, at or before `parent_checkpoint`), or further up if
    that thread inherited `node` too. It is the exact state `node` left, so the fork starts
    there; only when the store does not hold it is this an error, naming the run to look at."""
    records: _Records = {}

    def read(run: str) -> None:  # a run's threads and links at once: cases share ancestors
        links = store.checkpoints(run)
        for t in store.threads(run):
            records[t["thread_id"]] = (run, t, [x for x in links
                                                if x["thread_id"] == t["thread_id"]])

    def read_thread(thread_id: str) -> None:
        if thread_id in records:
            return
        run = store.run_of_thread(thread_id)
        if run is not None:
            read(run)

    read(run_id)
    # the cases as _points sees them: threads with checkpoints
    named = sorted((t["case"], t["thread_id"]) for r, t, links in records.values()
                   if r == run_id and links)
    chosen: dict[str, ForkPoint] = {}
    for case, thread_id in named:
        source, thread, links, upto = _where_it_ran(records, read_thread, run_id, case, node,
                                                    thread_id)
        point = _first_run(thread, links, node, upto)
        if point is not None:
            chosen[case] = point
        elif upto is None:
            ran = list(thread["inherited"]) + [n for x in links for n in x["nodes"]]
            raise ForkError(f"fork.after: case {case!r} of run {run_id[:8]} never ran node "
                            f"{node!r}; it ran {ran}")
        else:
            raise ForkError(
                f"fork.after: case {case!r} of run {run_id[:8]} inherited node {node!r} from "
                f"run {source[:8]}, and the store holds no checkpoint of that run's case right "
                f"after {node!r}; `wtb show {source[:8]}` lists the ones it holds, "
                f"{id_override('fork.run', source[:8], typed=True)} +fork.checkpoint=CP "
                "forks from one")
    return chosen


def copy_checkpoint(saver: Any, point: ForkPoint, thread_id: str, where: str = "") -> None:
    """Copy the checkpoint into `thread_id` of the same saver (at `where`, for the message).

    Its pending writes stay behind: they are what the parent's next step wrote (with
    durability="sync" every finished task's writes are saved against the checkpoint it
    started from), and copying them would make LangGraph skip those tasks in the fork."""
    source = {"configurable": {"thread_id": point.thread_id, "checkpoint_ns": "",
                               "checkpoint_id": point.checkpoint_id}}
    tup = saver.get_tuple(source)
    if tup is None:
        # a SQLite file and a PostgreSQL database are two checkpointers: a checkpoint is
        # copied within one, so the run's own storage.checkpoints must be this job's
        raise ForkError(
            f"fork: checkpoint {point.checkpoint_id} of run {point.run_id[:8]} is not in this "
            f"job's checkpointer{f' ({where})' if where else ''}; fork with the storage config "
            "(storage.checkpoints) the run used"
        )
    target = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    saver.put(target, tup.checkpoint, tup.metadata, tup.checkpoint["channel_versions"])


# -- shared prefixes ---------------------------------------------------------------------


def base_key(workflow: Mapping[str, Any], inputs: Any, env_digest: str, code_digest: str) -> str:
    """What every checkpoint of a case depends on, whichever nodes have run: the state
    schema, the case's input (with the input files' commit), breakpoints, a factory, the env
    and the code."""
    graph_wide = {k: workflow.get(k) for k in ("state", "factory", "interrupt_before",
                                                "interrupt_after")}
    return json_digest([graph_wide, inputs, env_digest, code_digest])


def prefix_key(base: str, workflow: Mapping[str, Any], path: list[str]) -> str:
    """The configs that decided a checkpoint reached by running `path`: the config of every
    node on it and every edge and route leaving START or one of them (they chose the next
    nodes). Two jobs with equal keys reach equal checkpoints, for deterministic nodes."""
    ran = set(path)
    sources = ran | {"START", "__start__"}
    nodes = workflow.get("nodes") or {}
    edges = [e for e in workflow.get("edges") or [] if e and e[0] in sources]
    routes = {s: r for s, r in (workflow.get("routes") or {}).items() if s in sources}
    return json_digest([base, path, {n: nodes.get(n) for n in sorted(ran)}, edges, routes])


def shared_point(store: Store, base: str, workflow: Mapping[str, Any]) -> ForkPoint | None:
    """The deepest stored checkpoint this case would reach itself, if any, whose files can
    all be read (one that lost a blob is passed over: the case runs those steps itself)."""
    for link in store.shareable(base):
        if link["path"] and link["prefix_key"] == prefix_key(base, workflow, link["path"]) \
                and not store.missing_blobs(link["commit"]):
            return ForkPoint(link["run_id"], link["thread_id"], link["checkpoint_id"],
                             link["step"], link["commit"], link["path"])
    return None


def first_step_key(workflow: Mapping[str, Any], env: Any) -> str | None:
    """For the launcher, from a composed job config: jobs with the same key share at least
    their first step, so running one of them first lets the others fork from it."""
    if workflow.get("factory") is not None:
        return json_digest([workflow, env])
    starts = [e[1] for e in workflow.get("edges") or [] if e and e[0] in ("START", "__start__")]
    routes = (workflow.get("routes") or {}).get("START")
    if routes:
        starts += list(routes.get("to") or [])
    base = {k: workflow.get(k) for k in ("state", "cases", "interrupt_before", "interrupt_after")}
    return prefix_key(json_digest([base, env]), workflow, sorted(set(starts)))
