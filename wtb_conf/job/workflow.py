"""Workflow config -> a LangGraph StateGraph (uncompiled, so the job picks the checkpointer).

The shape of `workflow:` is the model wtb_conf.config.models.WorkflowConfig, documented key by key
in docs/config.md. Every error names the YAML key at fault (`workflow.nodes.clean._target_`)
and what would be valid.
"""

from __future__ import annotations

import functools
import importlib
import operator
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from wtb_conf.config.checks import LIMIT, clip, param_problems
from wtb_conf.config.models import CallableSpec, StateField, WorkflowConfig, check

TYPES: dict[str, Any] = {
    "any": Any,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "file": str,  # the path of a case input file (wtb_conf.config.checks checks it)
    "text_file": str,
}


def _merge(a: dict, b: dict) -> dict:
    return {**(a or {}), **(b or {})}


REDUCERS: dict[str, Callable[[Any, Any], Any]] = {"append": operator.add, "merge": _merge}
ENDPOINTS = {"START": START, START: START, "END": END, END: END}
BREAKPOINTS = ("interrupt_before", "interrupt_after")
KEYS = WorkflowConfig.order  # every key is documented in docs/config.md


class WorkflowError(ValueError):
    """A workflow config that cannot become a graph; the message names the YAML key."""


def check_workflow(workflow: Any) -> WorkflowConfig:
    """`workflow` (a mapping or an OmegaConf container) validated whole; WorkflowError names
    every key at fault and what would be valid. A model is taken as it is: the job's
    admission checked it."""
    if isinstance(workflow, WorkflowConfig):
        return workflow
    return check(WorkflowConfig, workflow, "workflow", error=WorkflowError)


def _locate(key: str, target: str) -> Callable:
    """Import `pkg.module.attr[.attr]` (a dotted path: the model checked it); errors name the
    key and what failed to import."""
    parts = target.split(".")
    shown = repr(target[:LIMIT]) + (f"… ({len(target)} characters)"  # not 100 KB of it
                                    if len(target) > LIMIT else "")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name + ".").startswith(e.name + "."):
                continue  # this prefix is not a module; try a shorter one
            raise WorkflowError(f"{key}: importing {clip(module_name)!r} failed: {e}") from e
        except Exception as e:
            raise WorkflowError(f"{key}: importing {clip(module_name)!r} failed: {e!r}") from e
    else:
        raise WorkflowError(
            f"{key}: cannot import {shown}: no module {clip(parts[0])!r} on sys.path "
            "(run from your project directory, or install the package)"
        )
    for attr in parts[i:]:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise WorkflowError(
                f"{key}: cannot import {shown}: {module_name!r} has no attribute "
                f"{clip(attr)!r}"
            ) from None
    if not callable(obj):
        raise WorkflowError(f"{key}: {shown} is a {type(obj).__name__}, not a callable")
    return obj


def _callable(key: str, spec: CallableSpec, takes_state: bool = True) -> Callable:
    """`{_target_: pkg.fn, a: 1}` -> functools.partial(pkg.fn, a=1). Params the function does
    not take, or whose value its annotation refuses, are refused here, naming the key: the
    job would fail in the node with a TypeError that names neither."""
    fn = _locate(f"{key}._target_", spec.target)
    params = spec.params()
    if problems := param_problems(key, spec.target, fn, params, takes_state):
        raise WorkflowError("\n".join(problems))
    return functools.partial(fn, **params) if params else fn


def state_schema(state: Mapping[str, StateField]) -> type:
    """A TypedDict for the validated `workflow.state`."""
    fields: dict[str, Any] = {}
    for name, spec in state.items():
        tp = TYPES[spec.type]
        fields[name] = tp if spec.reducer is None else Annotated[tp, REDUCERS[spec.reducer]]
    return TypedDict("WorkflowState", fields)  # type: ignore[operator]


def _router(key: str, fn: Callable, source: str, targets: dict[str, str]) -> Callable:
    """Wrap a router so an answer that is not one of its declared targets names the route."""

    # Not functools.wraps: LangGraph reads the router's type hints, and __wrapped__ would make
    # it evaluate these annotations in the user's module.
    def route(state: Any) -> str:
        choice = fn(state)
        if choice not in targets:
            raise WorkflowError(
                f"{key}: the router from {source!r} returned {choice!r}, which is not one of "
                f"its targets {sorted(targets)} (workflow.routes.{source}.to)"
            )
        return targets[choice]

    route.__name__ = getattr(getattr(fn, "func", fn), "__name__", "route")
    return route


def build_graph(workflow: Any) -> StateGraph:
    """Build the StateGraph that `workflow` describes (or that its `factory` returns). The
    model refuses bad values (routes to unknown nodes included); what is left to fail here
    is importing the callables."""
    spec = check_workflow(workflow)
    if spec.factory is not None:
        graph = _callable("workflow.factory", spec.factory, takes_state=False)()
        if not isinstance(graph, StateGraph):
            raise WorkflowError(
                f"workflow.factory: returned a {type(graph).__name__}; it must return an "
                "uncompiled langgraph StateGraph (the bench compiles it with its checkpointer)"
            )
        check_exits(graph, "workflow.factory: the graph's")
        return graph

    graph = StateGraph(state_schema(spec.state))
    for name, node in spec.nodes.items():
        graph.add_node(name, _callable(f"workflow.nodes.{name}", node))
    for src, dst in spec.edges or []:
        graph.add_edge(ENDPOINTS.get(src, src), ENDPOINTS.get(dst, dst))
    for source, route in (spec.routes or {}).items():
        key = f"workflow.routes.{source}"
        targets = {n: ENDPOINTS.get(n, n) for n in route.to}
        fn = _router(key, _callable(f"{key}.router", route.router), source, targets)
        graph.add_conditional_edges(ENDPOINTS.get(source, source), fn, list(targets.values()))
    check_exits(graph, "workflow.edges:")
    return graph


def dead_ends(graph: StateGraph) -> list[str]:
    """The nodes a run can reach from START from which no path leads to END: a run that gets
    there loops until something stops it. Read from the StateGraph's own edges, routes
    (branches) and Command destinations, not from `compile().get_graph()`: that drawing adds
    a conditional edge to END that a plain cycle does not have (LangGraph 1.2), so it would
    pass the very graph this is for. A node with no way onward ends the run after it, and a
    router whose targets were not declared (no path map, no Literal hint) may go anywhere:
    both count as ways out, so only a graph known to loop is refused."""
    onward: dict[str, set[str]] = {name: set() for name in [START, *graph.nodes]}
    for src, dst in graph.edges:
        onward.setdefault(src, set()).add(dst)
    for starts, dst in graph.waiting_edges:  # add_edge([a, b], c): c waits for both
        for src in starts:
            onward.setdefault(src, set()).add(dst)
    exits = {END}
    for src, branches in graph.branches.items():
        for branch in branches.values():
            if branch.ends is None:
                exits.add(src)
            else:
                onward.setdefault(src, set()).update(branch.ends.values())
    for name, node in graph.nodes.items():
        ends = node.ends or ()
        onward[name].update(ends.values() if isinstance(ends, Mapping) else ends)
    exits.update(name for name in graph.nodes if not onward[name])

    def closure(seeds: set[str], edges: dict[str, set[str]]) -> set[str]:
        seen, todo = set(seeds), list(seeds)
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    back: dict[str, set[str]] = {}
    for src, dsts in onward.items():
        for dst in dsts:
            back.setdefault(dst, set()).add(src)
    runs, ends = closure({START}, onward), closure(exits, back)
    return [name for name in graph.nodes if name in runs and name not in ends]


def check_exits(graph: StateGraph, key: str) -> None:
    """Refuse a graph in which some node cannot reach END (`key`: who to blame, e.g.
    `workflow.edges:`): such a run would loop, storing a checkpoint and a commit per step."""
    stuck = dead_ends(graph)
    if stuck:
        raise WorkflowError(f"{key} nodes {stuck} cannot reach END: every path from them "
                            "loops; add an edge or route to END")


def breakpoints(workflow: Any) -> dict[str, list[str]]:
    """`interrupt_before` / `interrupt_after` for StateGraph.compile(): lists of node names."""
    spec = check_workflow(workflow)
    return {key: getattr(spec, key) for key in BREAKPOINTS if getattr(spec, key) is not None}
