"""wtb_conf's planner, the parts that need no store or env: which job waits for which
(`_order` over the checked configs, shared prefixes) and the task config a planner reads."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf

from hydra_plugins.wtb_conf_launcher.plan import Plan
from wtb_conf.driver.planner import _checked, _order, _task_config

ROUTER = {"router": {"_target_": "flows.small_or_big", "limit": 3}, "to": ["add", "double"]}


def task(**changes: Any):
    """A job's task config (as the planner gets it: no `hydra` node); `changes` are dotted
    keys set on it ("workflow__nodes__add__amount" for workflow.nodes.add.amount)."""
    cfg = OmegaConf.create({
        "workflow": {
            "state": {"x": "int", "trail": {"type": "list", "reducer": "append"}},
            "nodes": {"add": {"_target_": "flows.add", "amount": 2},
                      "double": {"_target_": "flows.double"}},
            "edges": [["START", "add"], ["add", "double"], ["double", "END"]],
            "cases": {"one": {"x": 1}, "two": {"x": 5}},
        },
        "env": {"python": None, "packages": []},
        "rerun": False,
        "share_prefixes": True,
    })
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    return cfg


def order(cfgs, plans=None) -> list[int | None]:
    plans = plans or [Plan() for _ in cfgs]
    _order([_checked(cfg) for cfg in cfgs], plans)
    return [p.waits_for for p in plans]


A = {}
B = {"workflow__nodes__add__amount": 3}
FACTORY = {"workflow": {"factory": {"_target_": "flows.factory"}, "cases": {"one": {"x": 1}}}}


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([A], [None]),
        ([A, A, A], [None, 0, 0]),
        ([A, B, A, B], [None, None, 0, 1]),
        ([B, A, A, B], [None, None, 1, 0]),
        # what comes after the first step does not matter
        ([A, {"workflow__nodes__double__factor": 3}], [None, 0]),
        ([A, {"workflow__edges": [["START", "add"], ["add", "double"], ["double", "add"]]}],
         [None, 0]),
        ([A, {"workflow__routes": {"double": ROUTER}}], [None, 0]),
        ([A, {"workflow__name": "renamed", "workflow__metrics": {"m": "x"}}],
         [None, 0]),
        # the first node's config, what leaves it, the input and the env do
        ([A, {"workflow__nodes__add___target_": "flows.double"}], [None, None]),
        ([A, {"workflow__edges": [["START", "add"], ["add", "END"], ["double", "END"]]}],
         [None, None]),
        ([A, {"workflow__edges": [["START", "double"], ["double", "add"], ["add", "END"]]}],
         [None, None]),
        ([A, {"workflow__routes": {"add": ROUTER}}], [None, None]),
        ([A, {"workflow__cases__two__x": 6}], [None, None]),
        ([A, {"workflow__state__x": "float"}], [None, None]),
        ([A, {"env__python": "3.12"}], [None, None]),
        ([A, {"env__packages": ["tabulate==0.9.0"]}], [None, None]),
        # routes out of START are a first step too
        ([{"workflow__routes": {"START": ROUTER}}] * 2, [None, 0]),
        ([{"workflow__routes": {"START": ROUTER}},
          {"workflow__routes": {"START": {**ROUTER, "to": ["add"]}}}], [None, None]),
        # a factory's graph is opaque: the whole workflow counts
        ([FACTORY, FACTORY], [None, 0]),
        ([FACTORY, {**FACTORY, "env__python": "3.12"}], [None, None]),
        ([FACTORY, A], [None, None]),
    ],
)
def test_jobs_with_the_same_first_step_wait_for_the_first(jobs, expected):
    assert order([task(**job) for job in jobs]) == expected


@pytest.mark.parametrize(
    "never_shares",
    [
        {"share_prefixes": False},
        {"rerun": True},
        {"fork": {"run": "abc123"}},
        {"fork": {"run": "abc123", "after": "add"}},
        {"workflow__interrupt_before": ["add"]},
        {"workflow__interrupt_after": ["double"]},
        "done",
    ],
)
def test_a_job_that_never_shares_neither_waits_nor_leads(never_shares):
    # jobs 0 and 2 are alike, and 1 and 3; without the first rule 2 would wait for 0
    # (and, but for breakpoints, which change the first step, 1 for 0)
    odd = {} if never_shares == "done" else never_shares
    cfgs = [task(**odd), task(), task(**odd), task()]
    plans = [Plan(done=never_shares == "done" and i % 2 == 0) for i in range(4)]
    assert order(cfgs, plans) == [None, None, None, 1]


@pytest.mark.parametrize(
    "still_shares",
    [
        {"share_prefixes": True},
        {"rerun": False},
        {"fork": None},
        {"workflow__interrupt_before": []},
        {"workflow__interrupt_after": None},
    ],
)
def test_a_falsy_opt_out_still_shares(still_shares):
    assert order([task(**still_shares)] * 3) == [None, 0, 0]


@pytest.mark.parametrize(
    "broken",
    [
        {"workflow__nodes__add__amount": "${nope}"},  # an interpolation that cannot resolve
        {"env": "${oc.env:WTB_TEST_SURELY_UNSET}"},
        {"workflow__edges": [5, ["add", "END"]]},  # an edge that is no pair
        {"workflow__routes": {"START": ["add"]}},  # a route that is no mapping
    ],
)
def test_a_job_whose_first_step_cannot_be_told_is_left_alone(broken):
    # it neither waits nor leads, not even for its twin; the others order as usual
    cfgs = [task(), task(**broken), task(), task(**broken)]
    assert order(cfgs) == [None, None, 0, None]


@pytest.mark.parametrize(
    "broken",
    [
        {"share_prefixes": "${oc.env:WTB_TEST_SURELY_UNSET}"},
        {"rerun": "${nope}"},
        {"fork": "${nope}"},
        {"fork": {}},  # a fork naming no run: the job fails on its config
        {"workflow__interrupt_before": "${nope}"},
    ],
)
def test_a_job_whose_opt_out_cannot_be_read_is_left_alone(broken):
    cfgs = [task(), task(**broken), task()]
    assert order(cfgs) == [None, None, 0]


@pytest.mark.parametrize(("readonly", "struct"), [(True, True), (False, True), (False, False)])
def test_task_config_drops_the_hydra_node_and_leaves_the_job_config_alone(readonly, struct):
    config = OmegaConf.create({
        "workflow": {"nodes": {"add": {"_target_": "flows.add", "amount": "${amount}"}}},
        "amount": 2,
        "hydra": {"job": {"num": 3, "name": "wtb"}, "runtime": {"choices": {"env": "default"}}},
    })
    OmegaConf.set_struct(config, struct)
    OmegaConf.set_readonly(config, readonly)
    before = OmegaConf.to_container(config)

    cfg = _task_config(config)

    assert "hydra" not in cfg and list(cfg) == ["workflow", "amount"]
    assert cfg.workflow.nodes.add.amount == 2  # interpolations still resolve in the copy
    assert OmegaConf.to_container(config) == before
    assert bool(OmegaConf.is_readonly(config)) == readonly
    assert bool(OmegaConf.is_struct(config)) == struct
