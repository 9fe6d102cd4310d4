from __future__ import annotations

import copy

import flows
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from omegaconf import OmegaConf

from wtb_conf.job.workflow import WorkflowError, breakpoints, build_graph


def wf(**overrides):
    base = copy.deepcopy(flows.WORKFLOW)
    base.update(overrides)
    return OmegaConf.create(base)


def run(graph, x=0):
    app = graph.compile(checkpointer=InMemorySaver())
    return app.invoke({"x": x}, {"configurable": {"thread_id": "t"}})


def test_builds_nodes_params_edges_routes_and_reducers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run(build_graph(wf()))
    # 0 +2=2 -> double 4 -> +2=6 -> double 12 -> +2=14 -> END
    assert out["x"] == 14
    assert out["trail"] == ["add", "double", "add", "double", "add"]


def test_factory_escape_hatch():
    out = run(build_graph(OmegaConf.create({"factory": {"_target_": "flows.factory"}})), x=1)
    assert out == {"x": 11}


def test_factory_and_nodes_together_is_an_error():
    cfg = wf(factory={"_target_": "flows.factory"})
    with pytest.raises(WorkflowError, match="workflow.factory: .*remove workflow.state"):
        build_graph(cfg)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("flows.nope", r"workflow.nodes.add._target_: cannot import 'flows.nope': 'flows' has no "
                       r"attribute 'nope'"),
        ("no_such_pkg.mod.fn", r"workflow.nodes.add._target_: cannot import "
                               r"'no_such_pkg.mod.fn': no module 'no_such_pkg'"),
        ("flows.NOT_CALLABLE", r"workflow.nodes.add._target_: 'flows.NOT_CALLABLE' is a int"),
        ("not a path!", r"workflow.nodes.add._target_: expected a dotted import path"),
    ],
)
def test_bad_node_target_names_the_yaml_key(target, message):
    cfg = wf()
    cfg.nodes.add._target_ = target
    with pytest.raises(WorkflowError, match=message):
        build_graph(cfg)


def test_node_without_target_names_the_key():
    cfg = wf()
    cfg.nodes.add = {"amount": 3}
    with pytest.raises(WorkflowError, match=r"workflow.nodes.add: expected a mapping with a _tar"):
        build_graph(cfg)


def test_edge_to_unknown_node_lists_the_nodes():
    with pytest.raises(WorkflowError, match=r"workflow.edges\[1\]: 'dubble' is not a node; nodes "
                                            r"are \['add', 'double'\]"):
        build_graph(wf(edges=[["START", "add"], ["dubble", "add"]]))


def test_route_target_must_be_a_node():
    cfg = wf()
    cfg.routes.add.to = ["double", "somewhere"]
    with pytest.raises(WorkflowError, match=r"workflow.routes.add.to: 'somewhere' is not a node"):
        build_graph(cfg)


def test_route_returning_unknown_node_fails_naming_the_route(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = wf()
    cfg.routes.add.router = {"_target_": "flows.nowhere"}
    with pytest.raises(WorkflowError, match=r"workflow.routes.add: the router from 'add' returned "
                                            r"'teleport', which is not one of its targets"):
        run(build_graph(cfg))


def test_unknown_state_type_and_reducer():
    with pytest.raises(WorkflowError, match=r"workflow.state.x.type: 'integer' is not one of"):
        build_graph(wf(state={"x": "integer"}))
    with pytest.raises(WorkflowError, match=r"workflow.state.x.reducer: 'sum' is not one of"):
        build_graph(wf(state={"x": {"type": "int", "reducer": "sum"}}))


def test_missing_entry_edge():
    with pytest.raises(WorkflowError, match="no edge leaves START"):
        build_graph(wf(edges=[["double", "add"]]))


def test_unknown_top_level_key_is_named():
    with pytest.raises(WorkflowError, match=r"workflow.egdes: unknown key; a workflow has name, "):
        build_graph(wf(egdes=[]))


def test_langgraphs_own_endpoint_names_work_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    graph = build_graph(wf(edges=[["__start__", "add"], ["double", "add"]]))
    assert run(graph)["x"] == 14


def test_breakpoints_are_lists_of_known_nodes():
    assert breakpoints(wf(interrupt_before="double")) == {"interrupt_before": ["double"]}
    with pytest.raises(WorkflowError, match=r"workflow.interrupt_after\[0\]: 'nope' is not a "
                                            r"node; nodes are \['add', 'double'\]"):
        breakpoints(wf(interrupt_after=["nope"]))


def test_several_bad_values_are_one_line_each():
    cfg = wf(metrics={"m": 5}, cases=[1])
    with pytest.raises(WorkflowError) as info:
        build_graph(cfg)
    assert str(info.value).splitlines() == [
        "workflow.cases: expected a mapping CASE: {field: value, ...}, got [1]",
        "workflow.metrics.m: expected a dotted path into the final state, e.g. rows_out, got 5",
    ]


LOOP = [["START", "add"], ["double", "add"]]


@pytest.mark.parametrize(
    ("edges", "to", "message"),
    [
        # add <-> double, and the route's exit was dropped: every path loops
        (LOOP, ["double"], r"workflow.edges: nodes \['add', 'double'\] cannot reach END: "
                           r"every path from them loops; add an edge or route to END"),
        # double leads to a self-loop: add can still end, double cannot
        ([["START", "add"], ["double", "double"]], ["double", "END"],
         r"nodes \['double'\] cannot reach END"),
        # an exit through the route (the router may never take it: the recursion limit's job)
        (LOOP, ["double", "END"], None),
        # a node with no way onward ends the run after it: an exit too
        ([["START", "add"]], ["double"], None),
    ],
)
def test_a_graph_with_no_way_to_end_is_refused_naming_the_nodes(edges, to, message):
    cfg = wf(edges=edges)
    cfg.routes.add.to = to
    if message is None:
        build_graph(cfg)
    else:
        with pytest.raises(WorkflowError, match=message):
            build_graph(cfg)


def test_the_demo_with_its_exit_replaced_by_a_loop_is_refused():
    from conftest import ROOT

    cfg = OmegaConf.load(ROOT / "conf/workflow/file_processing.yaml")
    cfg.edges = [e if list(e) != ["summarize", "END"] else ["summarize", "load"]
                 for e in cfg.edges]
    with pytest.raises(WorkflowError, match=r"workflow.edges: nodes \['load', 'clean', "
                                            r"'validate', 'quarantine', 'summarize'\] cannot"):
        build_graph(cfg)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("flows.factory_cycle", r"workflow.factory: the graph's nodes \['a', 'b'\] cannot "
                                r"reach END"),
        ("flows.factory_cycle_with_exit", None),
        ("flows.factory_undeclared_router", None),
    ],
)
def test_a_factorys_graph_is_checked_for_a_way_to_end(target, message):
    cfg = OmegaConf.create({"factory": {"_target_": target}})
    if message is None:
        build_graph(cfg)
    else:
        with pytest.raises(WorkflowError, match=message):
            build_graph(cfg)


# -- node, router and factory params against their functions' signatures --------------------

def kw_only(state: dict, *, ratio: float | None = None, names: list[str] = ()) -> dict:
    return {}


def any_kwargs(state: dict, **params) -> dict:
    return {}


def untyped(state, limit) -> dict:
    return {}


@pytest.mark.parametrize(("where", "params", "message"), [
    ("nodes.add", {"amount": "abc"},
     "workflow.nodes.add.amount: 'abc' is not an int (flows.add takes amount: int)"),
    ("nodes.add", {"amount": 2.5},
     "workflow.nodes.add.amount: 2.5 is not an int (flows.add takes amount: int)"),
    ("nodes.add", {"amount": 2, "amunt": 1},
     "workflow.nodes.add.amunt: not a parameter of flows.add; it takes amount"),
    ("nodes.double", {"x": 1},
     "workflow.nodes.double.x: not a parameter of flows.double; it takes no parameters but "
     "the state"),
    ("routes.add.router", {"limit": "ten"},
     "workflow.routes.add.router.limit: 'ten' is not an int (flows.small_or_big takes "
     "limit: int)"),
    ("nodes.double", {"_target_": "test_workflow.kw_only", "ratio": "half"},
     "workflow.nodes.double.ratio: 'half' is not a float | None (test_workflow.kw_only takes "
     "ratio: float | None)"),
    ("nodes.double", {"_target_": "test_workflow.kw_only", "names": [1, "b"]},
     "workflow.nodes.double.names: [1, 'b'] is not a list[str] (test_workflow.kw_only takes "
     "names: list[str])"),
])
def test_a_param_the_function_refuses_names_its_key(where, params, message):
    """It used to fail in the node, per job, with a TypeError naming neither key nor value."""
    cfg = wf()
    node = OmegaConf.select(cfg, where)
    for key, value in params.items():
        node[key] = value
    with pytest.raises(WorkflowError) as info:
        build_graph(cfg)
    assert str(info.value) == message


@pytest.mark.parametrize("params", [
    {"_target_": "test_workflow.any_kwargs", "whatever": object.__name__, "n": 3},
    {"_target_": "test_workflow.untyped", "limit": "anything"},
    {"_target_": "test_workflow.kw_only", "ratio": 1, "names": ["a"]},  # an int is a float
    {"_target_": "test_workflow.kw_only", "ratio": None},
])
def test_params_the_function_takes_pass(params):
    cfg = wf()
    cfg.nodes.double = params
    build_graph(cfg)
