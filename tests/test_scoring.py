"""Evaluators and their aggregates: tables of inputs and the scores or messages they give."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from wtb_conf import evaluators as ev
from wtb_conf.job.identity import code_digest, config_digest
from wtb_conf.job.scoring import (
    check_compare,
    eval_key,
    evaluators_of,
    score_case,
    summarize,
)
from wtb_conf.job.workflow import WorkflowError

# -- what an evaluator returns ----------------------------------------------------------

RETURNS = [
    (0.5, {"e": 0.5}, None),
    (3, {"e": 3}, None),
    (True, {"e": True}, None),
    ({"precision": 1.0, "ok": False}, {"e.precision": 1.0, "e.ok": False}, None),
    ({"inner": {"a": 1}}, {"e.inner.a": 1}, None),
    ("0.9", {}, "TypeError: returned str '0.9'; an evaluator returns a number, a bool"),
    (None, {}, "TypeError: returned NoneType None;"),
    ([1, 2], {}, "TypeError: returned list [1, 2];"),
    ({}, {}, "TypeError: returned dict {};"),
    ({"a": "x"}, {}, "TypeError: returned str 'x';"),
    (math.nan, {}, "ValueError: returned nan; a score must be a finite number"),
    (math.inf, {}, "ValueError: returned inf; a score must be a finite number"),
    (np.float32(0.5), {"e": 0.5}, None),  # numpy scalars are plain numbers and bools
    (np.bool_(True), {"e": True}, None),
    ({"n": np.int64(3)}, {"e.n": 3}, None),
]


def returning(state, value):
    return value


def raising(state):
    raise ValueError("no summary in the state")


def takes_expected(state, expected):
    return state["x"] == expected


def maybe_expected(state, expected=7):
    return state["x"] == expected


def workflow(**evaluators):
    return {"cases": {"one": {}, "two": {}},
            "evaluators": {name: {"_target_": f"test_scoring.{fn}", **params}
                           for name, (fn, params) in evaluators.items()}}


@pytest.mark.parametrize(("value", "scores", "error"), RETURNS)
def test_what_an_evaluator_returns(tmp_path, value, scores, error):
    evs = evaluators_of(workflow(e=("returning", {"value": value})))
    out = score_case(evs, "one", {}, tmp_path, tmp_path, None)
    assert out["scores"] == scores
    if error is None:
        assert out["errors"] == {}
    else:
        assert out["errors"]["e"].startswith(error)


def test_a_raising_evaluator_is_its_own_error_and_hides_no_other_score(tmp_path):
    evs = evaluators_of(workflow(bad=("raising", {}), good=("returning", {"value": 1})))
    out = score_case(evs, "one", {}, tmp_path, tmp_path, None)
    assert out == {"scores": {"good": 1},
                   "errors": {"bad": "ValueError: no summary in the state"}}


EXPECTED = [  # (evaluator, expected mapping, case, scores, error)
    ("takes_expected", {"one": 3}, "one", {"e": True}, None),
    ("takes_expected", {"one": 4}, "one", {"e": False}, None),
    ("takes_expected", {"one": 3}, "two", {},
     "KeyError: workflow.expected.two: no reference value for case 'two'"),
    ("takes_expected", None, "one", {}, "KeyError: workflow.expected.one"),
    ("maybe_expected", None, "one", {"e": False}, None),  # its default, 7
    ("maybe_expected", {"one": 3}, "one", {"e": True}, None),
    ("returning", {"one": 3}, "one", {"e": 1}, None),  # takes no expected: gets none
]


@pytest.mark.parametrize(("fn", "expected", "case", "scores", "error"), EXPECTED)
def test_expected_values_reach_the_evaluators_that_take_them(tmp_path, fn, expected, case,
                                                            scores, error):
    params = {"value": 1} if fn == "returning" else {}
    evs = evaluators_of(workflow(e=(fn, params)))
    out = score_case(evs, case, {"x": 3}, tmp_path, tmp_path, expected)
    assert out["scores"] == scores
    assert (out["errors"].get("e") or "").startswith(error or "")
    assert bool(out["errors"]) == bool(error)


BAD_CONFIG = [
    ({"evaluators": ["x"]}, "workflow.evaluators: expected a mapping NAME: {_target_: ...}"),
    ({"evaluators": {"a": {"_target_": "test_scoring.nope"}}},
     "workflow.evaluators.a._target_: cannot import 'test_scoring.nope'"),
    ({"evaluators": {"a": 1}}, "workflow.evaluators.a: expected a mapping with a _target_"),
    ({"evaluators": {"a/b": {"_target_": "test_scoring.raising"}}},
     "workflow.evaluators.a/b: names may not contain '/'"),
    ({"expected": [1]}, "workflow.expected: expected a mapping CASE: reference value"),
    ({"cases": {"one": {}}, "expected": {"uno": 1}},
     "workflow.expected.uno: not a case; cases are ['one']"),
    ({"metrics": {"rows": "rows_out"}, "evaluators": {"rows": {"_target_": "x.y"}}},
     "workflow.evaluators.rows: a metric (or rate) has that name already"),
    ({"evaluators": {"pass_rate": {"_target_": "x.y"}}},
     "workflow.evaluators.pass_rate: a metric (or rate) has that name already"),
]


@pytest.mark.parametrize(("wf", "message"), BAD_CONFIG)
def test_bad_evaluator_configs_name_the_key(wf, message):
    with pytest.raises(WorkflowError) as info:
        evaluators_of(wf)
    assert str(info.value).startswith(message)


UNSET = {"baseline": None, "gates": None}
COMPARE = [
    ({}, {"objective": None, "mode": "max", **UNSET}, None),
    ({"objective": "rows", "mode": "min"}, {"objective": "rows", "mode": "min", **UNSET}, None),
    ({"objective": "kept.f1"}, {"objective": "kept.f1", "mode": "max", **UNSET}, None),
    ({"objective": "success_rate"}, {"objective": "success_rate", "mode": "max", **UNSET}, None),
    ({"objective": "pass_rate"}, {"objective": "pass_rate", "mode": "max", **UNSET}, None),
    ({"baseline": "variant=a", "gates": ["kept.f1 < baseline - 0.02", "rows >= 10"]},
     {"objective": None, "mode": "max", "baseline": "variant=a",
      "gates": ["kept.f1 < baseline - 0.02", "rows >= 10"]}, None),
    ({"mode": "best"}, None, "compare.mode: 'best' is not one of max, min"),
    ({"goal": "x"}, None, "compare.goal: unknown key; compare has objective, mode, baseline, "
                          "gates"),
    ({"objective": "acc"}, None, "compare.objective: 'acc' is not a metric or a score of this "
                                 "workflow; valid: rows, kept, pass_rate, success_rate"),
    ({"gates": ["acc < 0.5"]}, None, "compare.gates[0] 'acc < 0.5': 'acc' is not a metric or a "
                                     "score of this workflow; valid: rows, kept"),
    ({"gates": ["kept.f1 <"]}, None, "compare.gates[0] 'kept.f1 <': write NAME OP VALUE"),
    ({"gates": "kept.f1 < 1"}, None, "compare.gates: expected a list of gates"),
]


@pytest.mark.parametrize(("compare", "valid", "message"), COMPARE)
def test_compare_objective_and_mode(compare, valid, message):
    wf = {"metrics": {"rows": "rows_out"}, "evaluators": {"kept": {}}}
    if message is None:
        assert check_compare(compare, wf) == valid
    else:
        with pytest.raises(WorkflowError) as info:
            check_compare(compare, wf)
        assert str(info.value).startswith(message)


def test_summary_means_pass_rates_success_rate_and_error_counts():
    cases = {"a": {"scores": {"f1": 0.5, "ok": True}, "errors": {}},
             "b": {"scores": {"f1": 1.0, "ok": False}, "errors": {"judge": "boom"}}}
    summary = summarize(cases, {"a": "completed", "b": "completed", "c": "failed"})
    assert summary == {
        "scores": {"f1": 0.75, "ok": 0.5}, "kinds": {"f1": "mean", "ok": "pass_rate"},
        "errors": {"judge": 1}, "pass_rate": 0.5, "success_rate": 2 / 3, "cases": 3}
    mixed = summarize({"a": {"scores": {"m": True}, "errors": {}},
                       "b": {"scores": {"m": 0.2}, "errors": {}}}, {"a": "completed",
                                                                    "b": "completed"})
    assert mixed["kinds"] == {"m": "mean"} and mixed["pass_rate"] is None  # not a check
    empty = summarize({}, {"a": "failed"})
    assert empty["pass_rate"] is None and empty["success_rate"] == 0


def test_evaluators_are_not_the_jobs_identity_but_are_the_evaluations():
    base = {"workflow": {"nodes": {"n": {"_target_": "flows.add"}}, "cases": {"one": {}}}}
    scored = OmegaConf.create(base)
    scored.workflow.evaluators = {"e": {"_target_": "test_scoring.raising"}}
    scored.workflow.expected = {"one": 1}
    scored.compare = {"objective": "e", "mode": "max"}
    plain = OmegaConf.create(base)
    assert config_digest(scored) == config_digest(plain)
    assert code_digest(scored.workflow) == code_digest(plain.workflow)
    other = OmegaConf.to_container(scored.workflow)
    other["expected"] = {"one": 2}
    assert eval_key(OmegaConf.to_container(scored.workflow)) != eval_key(other)


# -- built-in evaluators ----------------------------------------------------------------

STATE = {"total": 10.004, "answer": "The capital is Paris.", "nested": {"n": 3}}

BUILTINS = [
    (ev.equals, {"key": "nested.n", "expected": 3}, True),
    (ev.equals, {"key": "nested.n", "expected": {"nested.n": 4}}, False),
    (ev.close_to, {"key": "total", "expected": 10, "abs_tol": 0.01}, True),
    (ev.close_to, {"key": "total", "expected": {"total": 10}}, False),
    (ev.contains, {"key": "answer", "text": "Paris"}, True),
    (ev.matches, {"key": "answer", "pattern": r"capital is \w+\.$"}, True),
    (ev.matches, {"key": "answer", "pattern": r"^Paris"}, False),
    (ev.file_exists, {"path": "report.md"}, True),
    (ev.file_exists, {"path": "missing.md"}, False),
    (ev.file_contains, {"path": "report.md", "text": "total: 10"}, True),
    (ev.file_contains, {"path": "report.md", "pattern": r"total: \d+$"}, True),
    (ev.file_contains, {"path": "missing.md", "text": "x"}, False),
    (ev.file_equals, {"path": "report.md", "content": "# R\ntotal: 10"}, True),
]

BUILTIN_ERRORS = [
    (ev.equals, {"key": "nope", "expected": 1}, KeyError, "the final state has no 'nope'"),
    (ev.equals, {"key": "total", "expected": {"other": 1}}, KeyError,
     "the expected value has no 'total'; it has ['other']"),
    (ev.close_to, {"key": "answer", "expected": 1}, TypeError, "'answer' is 'The capital"),
    (ev.file_exists, {"path": "../outside"}, ValueError,
     "path '../outside' leaves the case directory"),
    (ev.file_contains, {"path": "report.md"}, ValueError, "give one of text or pattern"),
]


@pytest.mark.parametrize(("fn", "params", "result"), BUILTINS)
def test_builtin_evaluators(tmp_path, monkeypatch, fn, params, result):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.md").write_text("# R\ntotal: 10")
    assert fn(STATE, **params) is result


@pytest.mark.parametrize(("fn", "params", "error", "message"), BUILTIN_ERRORS)
def test_builtin_evaluator_errors_say_what_is_wrong(tmp_path, monkeypatch, fn, params, error,
                                                    message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.md").write_text("x")
    with pytest.raises(error) as info:
        fn(STATE, **params)
    assert info.value.args[0].startswith(message)


def test_a_builtins_key_error_is_recorded_without_quotes(tmp_path):
    evs = evaluators_of({"evaluators": {"e": {"_target_": "wtb_conf.evaluators.equals",
                                              "key": "nope"}}})
    out = score_case(evs, "one", {}, tmp_path, tmp_path, {"one": 1})
    assert out["errors"] == {"e": "KeyError: the final state has no 'nope'"}
