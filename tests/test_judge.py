"""Judging variants end to end, as a user does it: the demo sweep names its best job,
`wtb compare` says by how much and why a job failed, `wtb evaluate` re-scores without a node
running, and a cached sweep whose evaluators changed re-scores instead of re-running."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import conftest
import pytest
from conftest import run_bench

from wtb_conf.store import open_store


def wtb(project: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    return conftest.wtb(project, *args, code=code, timeout=300)


def compare_json(project: Path, *args: str) -> list[dict]:
    return json.loads(wtb(project, "compare", *args, "--json").stdout)


def node_events(project: Path) -> int:
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        return sum(e["kind"] == "node" for r in store.runs() for e in store.events(r["run_id"]))


def evaluations(project: Path, run_id: str) -> list[dict]:
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        return store.evaluations(run_id)


def test_the_demo_sweep_names_no_best_job_from_two_cases_run_once(demo):
    out = (demo / "sweep.out").read_text()
    # drop_invalid's two thresholds do the same; on 2 cases, fill_defaults' lower f1 is not
    # a difference a paired test can call real
    assert "★ best" not in out
    assert ("no best job on kept.f1: job 0 is tied with job 1, job 2, job 3 (top two: +0 "
            "[+0, +0], p = 1 (paired-t, 2 pairs)); the pairs show no difference at all") in out
    rows = compare_json(demo)
    assert [r["job_num"] for r in rows] == [0, 1, 2, 3]
    for row in rows:
        assert {"run_id", "params", "metrics", "scores", "best"} <= set(row)
        assert row["success_rate"] == 1.0 and row["objective"] == "kept.f1"
    assert [(r["best"], r["tied"]) for r in rows] == [(False, True)] * 4
    assert rows[0]["vs_next"]["run_id"] == rows[1]["run_id"] and rows[0]["vs_next"]["p"] == 1
    by_variant = {r["params"]["variant"]: r["scores"] for r in rows}
    # drop_invalid drops a sale with no region: perfect precision, a wrong total for orders
    assert by_variant["drop_invalid"]["kept.precision"] == 1.0
    assert by_variant["drop_invalid"]["total_ok"] == 0.5
    assert by_variant["fill_defaults"]["kept.recall"] == 1.0
    assert by_variant["fill_defaults"]["total_ok"] == 1.0
    assert rows[0]["scores"]["kept.f1"] == pytest.approx(0.97368, abs=1e-4)


@pytest.mark.slow
def test_wtb_evaluate_rescores_stored_runs_without_running_a_node(demo, tmp_path):
    project = tmp_path / "demo"
    shutil.copytree(demo, project)
    nodes = node_events(project)
    rows = compare_json(project)
    # a looser tolerance and a new evaluator, as Hydra overrides of the stored configs
    proc = wtb(project, "evaluate", "last", "workflow.evaluators.total_ok.abs_tol=1000",
               "+workflow.evaluators.rows_ok._target_=wtb_conf.evaluators.equals",
               "+workflow.evaluators.rows_ok.key=rows_out")
    assert proc.stdout.count("scored again") == 4 and "no best job on kept.f1" in proc.stdout
    assert node_events(project) == nodes  # nothing ran
    after = compare_json(project)
    for before, now in zip(rows, after, strict=True):
        assert now["run_id"] == before["run_id"]
        assert now["scores"]["total_ok"] == 1.0
        assert now["scores"]["kept.f1"] == before["scores"]["kept.f1"]
        # the demo's expected values have no rows_out: that evaluator's error, on each case
        assert now["score_errors"] == {"rows_ok": 2} and "rows_ok" not in now["scores"]
        history = evaluations(project, now["run_id"])
        assert [e["source"] for e in history] == ["evaluate", "run"]
    cases = compare_json(project, "--cases")
    assert cases[0]["score_errors"]["rows_ok"].startswith(
        "KeyError: the expected value has no 'rows_out'")
    text = wtb(project, "compare").stdout
    assert "evaluator rows_ok failed on 2 case(s)" in text
    # `~` removes an evaluator (from the stored config: the rows_ok above is gone too)
    wtb(project, "evaluate", "~workflow.evaluators.report_written", rows[0]["run_id"][:8])
    one = next(r for r in compare_json(project) if r["run_id"] == rows[0]["run_id"])
    assert "report_written" not in one["scores"] and "rows_ok" not in one["score_errors"]
    # a bad override names itself; nothing is recorded
    bad = wtb(project, "evaluate", "last", "compare.objective=nope", code=1)
    assert "compare.objective: 'nope' is not a metric or a score" in bad.stderr
    assert len(evaluations(project, rows[0]["run_id"])) == 3


@pytest.mark.slow
def test_a_cached_sweep_with_changed_evaluators_rescores_instead_of_running(demo, tmp_path):
    project = tmp_path / "demo"
    shutil.copytree(demo, project)
    nodes = node_events(project)
    proc = run_bench(project, "-m", "+experiment=demo", "workflow.evaluators.total_ok.abs_tol=1000")
    assert "4 of 4 jobs completed (4 cached)" in proc.stdout
    assert node_events(project) == nodes
    rows = compare_json(project)
    assert {r["status"] for r in rows} == {"cached"}
    assert {r["scores"]["total_ok"] for r in rows} == {1.0}
    assert {evaluations(project, r["run_id"])[0]["source"] for r in rows} == {"evaluate"}
    base = compare_json(project, "--baseline", rows[0]["cached_from"])
    assert base[0]["delta"]["total_ok"] == 0.5  # 1.0 now against 0.5 under the demo's own


JUDGED = """
state: {x: int, trail: {type: list, reducer: append}}
nodes:
  add: {_target_: judged.add}
  check: {_target_: judged.check}
edges: [[START, add], [add, check], [check, END]]
cases: {good: {x: 1}, bad: {x: -5}}
metrics: {x: x}
evaluators:
  right: {_target_: wtb_conf.evaluators.equals, key: x}
  shaky: {_target_: judged.shaky}
expected: {good: 2, bad: -4}
"""

JUDGED_NODES = """
def add(state):
    return {"x": state["x"] + 1, "trail": ["add"]}

def check(state):
    if state["x"] < 0:
        raise ValueError(f"x={state['x']} is negative")
    return {"trail": ["check"]}

def shaky(state):
    return "not a score"
"""


@pytest.mark.slow
def test_why_a_job_failed_node_traceback_and_success_rate(tmp_path):
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/workflow/judged.yaml").write_text(JUDGED)
    (tmp_path / "judged.py").write_text(textwrap.dedent(JUDGED_NODES))
    proc = run_bench(tmp_path, "-m", "workflow=judged", "compare.objective=right", check=False)
    assert proc.returncode == 1 and "1 of 1 jobs failed" in proc.stderr
    [row] = compare_json(tmp_path)
    assert row["status"] == "failed" and row["error"] == "ValueError: x=-4 is negative"
    assert row["success_rate"] == 0.5  # the good case still ran, and was scored
    assert row["scores"] == {"right": 1.0} and row["score_errors"] == {"shaky": 1}
    assert not row["best"]  # a failed job is never the best one
    cases = {r["case"]: r for r in compare_json(tmp_path, "--cases")}
    assert cases["bad"]["status"] == "failed" and cases["bad"]["failed_node"] == "check"
    assert cases["good"]["status"] == "completed" and cases["good"]["scores"] == {"right": True}
    assert cases["good"]["score_errors"]["shaky"].startswith(
        "TypeError: returned str 'not a score'; an evaluator returns a number, a bool")
    text = wtb(tmp_path, "compare", "--cases").stdout
    assert "job 0 case bad failed in node check: ValueError: x=-4 is negative" in text
    show = json.loads(wtb(tmp_path, "show", "last", "--json").stdout)
    bad = next(c for c in show["cases"] if c["case"] == "bad")
    assert bad["failed_node"] == "check" and "ValueError: x=-4 is negative" in bad["traceback"]
