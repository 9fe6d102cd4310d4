"""Node functions the tests' workflows point at (importable as `flows`: tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

NOT_CALLABLE = 42

# The graph most tests build: add, then double until x is big enough (a route back to add).
WORKFLOW = {
    "state": {"x": "int", "trail": {"type": "list", "reducer": "append"}},
    "nodes": {"add": {"_target_": "flows.add", "amount": 2},
              "double": {"_target_": "flows.double"}},
    "edges": [["START", "add"], ["double", "add"]],
    "routes": {"add": {"router": {"_target_": "flows.small_or_big", "limit": 10},
                       "to": ["double", "END"]}},
}


def add(state: dict, amount: int = 1) -> dict:
    Path(f"add-{state['x']}.txt").write_text(str(state["x"] + amount))
    return {"x": state["x"] + amount, "trail": ["add"]}


def double(state: dict) -> dict:
    return {"x": state["x"] * 2, "trail": ["double"]}


def boom(state: dict) -> dict:
    raise ValueError(f"boom at x={state['x']}")


def small_or_big(state: dict, limit: int = 3) -> str:
    return "double" if state["x"] < limit else "END"


def nowhere(state: dict) -> str:
    return "teleport"


def factory():
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class S(TypedDict):
        x: int

    g = StateGraph(S)
    g.add_node("inc", lambda s: {"x": s["x"] + 10})
    g.add_edge(START, "inc")
    g.add_edge("inc", END)
    return g


def keep_going(state: dict, limit: int = 3) -> str:
    """A router with an exit (END) that it never takes: the loop ends only at a guard."""
    return "double"


def _graph(edges: list[tuple[str, str]], routes: dict[str, list[str] | None] | None = None):
    from typing import TypedDict

    from langgraph.graph import StateGraph

    class S(TypedDict):
        x: int

    g = StateGraph(S)
    for name in dict.fromkeys(n for edge in edges for n in edge if not n.startswith("__")):
        g.add_node(name, lambda s: {"x": s["x"] + 1})
    for src, dst in edges:
        g.add_edge(src, dst)
    for src, targets in (routes or {}).items():
        g.add_conditional_edges(src, lambda s: "b", targets)
    return g


def factory_cycle():
    """START -> a -> b -> a: no way out."""
    return _graph([("__start__", "a"), ("a", "b"), ("b", "a")])


def factory_cycle_with_exit():
    """START -> a -> b, and b routes to a or END."""
    return _graph([("__start__", "a"), ("a", "b")], {"b": ["a", "__end__"]})


def factory_undeclared_router():
    """A router with no declared targets: where it goes cannot be known, so it is let be."""
    return _graph([("__start__", "a"), ("a", "b")], {"b": None})


def reads_y(state: dict) -> bool:
    """An evaluator that fails on every case (KeyError): the state has no y."""
    return state["y"] == 1
