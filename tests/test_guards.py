"""A loop must not run forever or fill a disk (issue #27 item 1): a graph with no way to END is
refused before the sweep starts; a loop with an exit it never takes is stopped by the bench's
own bounds (wtb_conf.config.guards),
each a recorded failure naming the case and the key to raise."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import conftest
import pytest
from conftest import copy_project, run_bench
from langgraph.errors import GraphRecursionError

from wtb_conf.config import guards as guards_module
from wtb_conf.config.guards import (
    CASE_TIMEOUT_S,
    MAX_CHECKPOINTS,
    RECURSION_LIMIT,
    CaseTimeout,
    CheckpointLimit,
    Guards,
    RecursionLimit,
)

TESTS = Path(__file__).resolve().parent

# add, then double, then add ...: the route's exit (END) is never taken (flows.keep_going)
LOOP_WF = """\
state:
  x: int
  trail: {type: list, reducer: append}
nodes:
  add: {_target_: flows.add, amount: 2}
  double: {_target_: flows.double}
edges: [[START, add], [double, add]]
routes:
  add:
    router: {_target_: flows.keep_going}
    to: [double, END]
cases:
  one: {x: 0}
"""


def wtb(project: Path, *args: str) -> subprocess.CompletedProcess:
    return conftest.wtb(project, *args, code=None)


def sweep(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    return run_bench(project, "-m", *args, env=env, check=False)


def runs(project: Path) -> list[dict]:
    con = sqlite3.connect(project / "data/wtb.db")
    try:
        rows = con.execute("SELECT id, status, error FROM runs ORDER BY started_at").fetchall()
        links = dict(con.execute("SELECT run_id, count(*) FROM checkpoint_links "
                                 "GROUP BY run_id").fetchall())
    finally:
        con.close()
    return [{"id": i, "status": s, "error": e, "links": links.get(i, 0)} for i, s, e in rows]


def size_of(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


DEAD_END = ("workflow.edges: nodes ['load', 'clean', 'validate', 'quarantine', 'summarize'] "
            "cannot reach END: every path from them loops; add an edge or route to END")


@pytest.mark.parametrize("args", [("workflow=file_processing",), ("+experiment=demo",)])
def test_the_demo_with_a_dead_end_cycle_is_refused_before_the_sweep_starts(tmp_path, args):
    project = copy_project(tmp_path)
    wf = project / "conf/workflow/file_processing.yaml"
    text = wf.read_text()
    assert "  - [summarize, END]\n" in text
    wf.write_text(text.replace("  - [summarize, END]\n", "  - [summarize, load]\n"))
    proc = run_bench(project, "-m", *args, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [DEAD_END]
    assert not (project / "data").exists() and not (project / "multirun").exists()


@pytest.fixture(scope="module")
def looped(tmp_path_factory) -> Path:
    """A project whose `loop` workflow loops until a bound stops it, swept twice: with the
    defaults, then with `+workflow.max_checkpoints=10` (from the input: a shared prefix would
    start it from the first run's last checkpoint)."""
    project = copy_project(tmp_path_factory.mktemp("loop"))
    (project / "conf/workflow/loop.yaml").write_text(LOOP_WF)
    for extra in ((), ("+workflow.max_checkpoints=10", "share_prefixes=false")):
        proc = sweep(project, "workflow=loop", *extra)
        (project / f"sweep{len(extra)}.out").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 1, proc.stdout + proc.stderr
    return project


@pytest.mark.slow
def test_a_loop_that_never_takes_its_exit_is_stopped_by_the_recursion_limit(looped):
    first = runs(looped)[0]
    assert first["status"] == "failed"
    assert first["error"] == (
        "RecursionLimit: workflow.recursion_limit: case 'one' took 100 steps without reaching "
        "END; raise workflow.recursion_limit if the loop is meant to run longer")
    assert first["links"] == RECURSION_LIMIT + 2  # the input, then one per step (0..100)
    assert "workflow.recursion_limit: case 'one' took 100 steps" in (
        looped / "sweep0.out").read_text()
    shown = json.loads(wtb(looped, "show", first["id"], "--json").stdout)
    assert "workflow.recursion_limit" in json.dumps(shown)
    fsck = wtb(looped, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert size_of(looped / "data") < 5 << 20  # a few MB, where it grew without bound


def test_a_run_stops_at_max_checkpoints(looped):
    second = runs(looped)[1]
    assert second["status"] == "failed"
    assert second["error"].startswith(
        "CheckpointLimit: workflow.max_checkpoints: the run stored 10 checkpoints (case 'one' "
        "at step 8) and was not done; raise workflow.max_checkpoints")
    assert second["links"] == 10
    fsck = wtb(looped, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_the_defaults_and_what_a_workflow_sets():
    assert Guards.of({}) == Guards(RECURSION_LIMIT, CASE_TIMEOUT_S, MAX_CHECKPOINTS)
    assert (RECURSION_LIMIT, CASE_TIMEOUT_S, MAX_CHECKPOINTS) == (100, 3600, 10_000)
    set_ = Guards.of({"recursion_limit": 7, "case_timeout_s": 2.5, "max_checkpoints": None})
    assert (set_.recursion_limit, set_.case_timeout_s, set_.max_checkpoints) == (7, 2.5, 10_000)


def test_a_case_over_its_wall_time_stops_after_a_checkpoint(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(guards_module.time, "monotonic", lambda: now[0])
    guards = Guards(case_timeout_s=0.5)
    guards.start("orders")
    now[0] += 0.4
    guards.stored("orders", 1, more=True)  # within its time
    now[0] += 0.2
    guards.stored("orders", 2, more=False)  # over, but that checkpoint ended the case
    with pytest.raises(CaseTimeout, match=(
            r"^workflow.case_timeout_s: case 'orders' ran 0.6 s \(over 0.5 s\) without "
            r"reaching END, stopped at step 3; raise workflow.case_timeout_s")):
        guards.stored("orders", 3, more=True)
    guards.start("returns")  # each case has its own clock
    guards.stored("returns", 0, more=True)


def test_the_checkpoint_limit_counts_every_case_of_the_run():
    guards = Guards(max_checkpoints=3)
    guards.stored("orders", 0, more=True)
    guards.stored("orders", 1, more=False)
    guards.stored("returns", 0, more=False)  # the 3rd, and the last: no more were wanted
    with pytest.raises(CheckpointLimit, match=r"stored 4 checkpoints \(case 'returns' at step"):
        guards.stored("returns", 1, more=True)


def test_langgraphs_recursion_error_becomes_the_benchs_own():
    guards = Guards(recursion_limit=12)
    named = guards.explain(GraphRecursionError("Recursion limit of 12 reached"), "orders")
    assert isinstance(named, RecursionLimit)
    assert str(named).startswith("workflow.recursion_limit: case 'orders' took 12 steps")
    other = ValueError("boom")
    assert guards.explain(other, "orders") is other
