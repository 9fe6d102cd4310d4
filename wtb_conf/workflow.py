"""Workflow config -> a LangGraph StateGraph (uncompiled, so the job picks the checkpointer).

The shape of `workflow:` is documented key by key in docs/config.md. Every error names the
YAML key at fault (`workflow.nodes.clean._target_`) and what would be valid.
"""

from __future__ import annotations

import functools
import importlib
import operator
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from omegaconf import DictConfig, ListConfig, OmegaConf

TYPES: dict[str, Any] = {
    "any": Any,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
}


def _merge(a: dict, b: dict) -> dict:
    return {**(a or {}), **(b or {})}


REDUCERS: dict[str, Callable[[Any, Any], Any]] = {"append": operator.add, "merge": _merge}
ENDPOINTS = {"START": START, START: START, "END": END, END: END}
_GRAPH_KEYS = ("state", "nodes", "edges", "routes")
BREAKPOINTS = ("interrupt_before", "interrupt_after")
KEYS = ("name", "description", *_GRAPH_KEYS, "cases", "metrics", "factory", *BREAKPOINTS,
        "evaluators", "expected")
# (every key is documented in docs/config.md)


class WorkflowError(ValueError):
    """A workflow config that cannot become a graph; the message names the YAML key."""


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _locate(key: str, target: Any) -> Callable:
    """Import `pkg.module.attr[.attr]`; errors name the key and what failed to import."""
    if not isinstance(target, str) or not target.replace(".", "").replace("_", "").isalnum():
        raise WorkflowError(f"{key}: expected a dotted import path like 'pkg.module.func'")
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name + ".").startswith(e.name + "."):
                continue  # this prefix is not a module; try a shorter one
            raise WorkflowError(f"{key}: importing {module_name!r} failed: {e}") from e
        except Exception as e:
            raise WorkflowError(f"{key}: importing {module_name!r} failed: {e!r}") from e
    else:
        raise WorkflowError(
            f"{key}: cannot import {target!r}: no module {parts[0]!r} on sys.path "
            "(run from your project directory, or install the package)"
        )
    for attr in parts[i:]:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise WorkflowError(
                f"{key}: cannot import {target!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise WorkflowError(f"{key}: {target!r} is a {type(obj).__name__}, not a callable")
    return obj


def _callable(key: str, spec: Any) -> Callable:
    """`{_target_: pkg.fn, a: 1}` -> functools.partial(pkg.fn, a=1)."""
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise WorkflowError(f"{key}: expected a mapping with a _target_ (a dotted import path)")
    params = {k: _plain(v) for k, v in spec.items() if k != "_target_"}
    fn = _locate(f"{key}._target_", spec["_target_"])
    return functools.partial(fn, **params) if params else fn


def state_schema(state: Mapping[str, Any] | None) -> type:
    """A TypedDict for `workflow.state`: `field: type` or `field: {type: ..., reducer: ...}`."""
    if not state:
        raise WorkflowError("workflow.state: declare the state fields, e.g. `state: {rows: list}`")
    fields: dict[str, Any] = {}
    for name, spec in state.items():
        key = f"workflow.state.{name}"
        if isinstance(spec, str) or spec is None:
            spec = {"type": spec or "any"}
        elif not isinstance(spec, Mapping):
            raise WorkflowError(f"{key}: expected a type name or {{type: ..., reducer: ...}}")
        extra = set(spec) - {"type", "reducer"}
        if extra:
            raise WorkflowError(f"{key}: unknown keys {sorted(extra)}; allowed: type, reducer")
        type_name = spec.get("type", "any")
        if type_name not in TYPES:
            raise WorkflowError(f"{key}.type: {type_name!r} is not one of {sorted(TYPES)}")
        tp = TYPES[type_name]
        reducer = spec.get("reducer")
        if reducer is not None:
            if reducer not in REDUCERS:
                raise WorkflowError(
                    f"{key}.reducer: {reducer!r} is not one of {sorted(REDUCERS)}"
                )
            tp = Annotated[tp, REDUCERS[reducer]]
        fields[name] = tp
    return TypedDict("WorkflowState", fields)  # type: ignore[operator]


def _endpoint(key: str, name: Any, nodes: Mapping[str, Any]) -> str:
    if name in ENDPOINTS:
        return ENDPOINTS[name]
    if name not in nodes:
        raise WorkflowError(
            f"{key}: {name!r} is not a node; nodes are {sorted(nodes)} (or START / END)"
        )
    return name


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


def build_graph(workflow: Mapping[str, Any]) -> StateGraph:
    """Build the StateGraph that `workflow` describes (or that its `factory` returns)."""
    for key in workflow:
        if key not in KEYS:
            raise WorkflowError(f"workflow.{key}: unknown key; a workflow has {', '.join(KEYS)}")
    if workflow.get("factory") is not None:
        clash = [k for k in _GRAPH_KEYS if workflow.get(k)]
        if clash:
            raise WorkflowError(
                f"workflow.factory: a factory builds the whole graph; remove workflow.{clash[0]}"
            )
        graph = _callable("workflow.factory", workflow["factory"])()
        if not isinstance(graph, StateGraph):
            raise WorkflowError(
                f"workflow.factory: returned a {type(graph).__name__}; it must return an "
                "uncompiled langgraph StateGraph (the bench compiles it with its checkpointer)"
            )
        return graph

    nodes = workflow.get("nodes") or {}
    if not nodes:
        raise WorkflowError("workflow.nodes: a workflow needs at least one node (or a factory)")
    graph = StateGraph(state_schema(workflow.get("state")))
    for name, spec in nodes.items():
        if name in ENDPOINTS:
            raise WorkflowError(f"workflow.nodes.{name}: {name} is reserved; rename the node")
        graph.add_node(name, _callable(f"workflow.nodes.{name}", spec))

    has_entry = False
    for i, edge in enumerate(workflow.get("edges") or []):
        key = f"workflow.edges[{i}]"
        if not isinstance(edge, list | tuple | ListConfig) or len(edge) != 2:
            raise WorkflowError(f"{key}: expected a pair [from, to], got {_plain(edge)!r}")
        src, dst = (_endpoint(key, n, nodes) for n in edge)
        if src == END or dst == START:
            raise WorkflowError(f"{key}: edges go from START or a node to a node or END")
        has_entry |= src == START
        graph.add_edge(src, dst)

    for source, route in (workflow.get("routes") or {}).items():
        key = f"workflow.routes.{source}"
        src = _endpoint(key, source, nodes)
        if not isinstance(route, Mapping) or set(route) != {"router", "to"}:
            raise WorkflowError(f"{key}: expected {{router: {{_target_: ...}}, to: [node, ...]}}")
        to = _plain(route["to"])
        if not isinstance(to, list) or not to:
            raise WorkflowError(f"{key}.to: expected a non-empty list of node names (or END)")
        targets = {n: _endpoint(f"{key}.to", n, nodes) for n in to}
        fn = _router(key, _callable(f"{key}.router", route["router"]), source, targets)
        has_entry |= src == START
        graph.add_conditional_edges(src, fn, list(targets.values()))

    if not has_entry:
        raise WorkflowError("workflow.edges: no edge leaves START; add [START, <first node>]")
    return graph


def breakpoints(workflow: Mapping[str, Any]) -> dict[str, list[str]]:
    """`interrupt_before` / `interrupt_after` for StateGraph.compile(): lists of node names."""
    nodes = workflow.get("nodes") or {}
    out = {}
    for key in BREAKPOINTS:
        names = _plain(workflow.get(key))
        if names is None:
            continue
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise WorkflowError(f"workflow.{key}: expected a list of node names")
        for i, name in enumerate(names):
            if nodes and name not in nodes:
                raise WorkflowError(
                    f"workflow.{key}[{i}]: {name!r} is not a node; nodes are {sorted(nodes)}"
                )
        out[key] = names
    return out
