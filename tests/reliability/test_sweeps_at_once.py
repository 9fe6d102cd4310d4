"""Sweeps that meet: two at once in one directory, the same job in both, and sweeps that end
before their jobs run. Each status must say what happened, and nothing may be shared by
accident (a job dir) or done twice (a job)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import run_bench
from test_faults import NODES, WORKFLOW, assert_nothing_lost, runs, start, tag, wait_for, wtb


def project_in(tmp_path: Path) -> Path:
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/workflow/fault.yaml").write_text(WORKFLOW)
    (tmp_path / "fault.py").write_text(NODES)
    return tmp_path


def sweeps(project: Path) -> list[dict]:
    with sqlite3.connect(project / "data/wtb.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM sweeps ORDER BY created_at")]


@pytest.mark.slow
def test_two_identical_jobs_at_once_run_once_and_the_second_is_a_cache_hit(tmp_path):
    project = project_in(tmp_path)
    (project / "hang-a").touch()
    first = start(project, "workflow.nodes.work.tag=a")
    wait_for(project / "pid-a", first)
    second = start(project, "workflow.nodes.work.tag=a")
    deadline = time.monotonic() + 120  # the second job has begun: it waits for the first
    while len([r for r in runs(project) if r["status"] == "running"]) < 2:
        assert time.monotonic() < deadline, "the second sweep's job never started"
        time.sleep(0.1)
    (project / "hang-a").unlink()
    for proc in (first, second):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    assert sorted(r["status"] for r in runs(project)) == ["cached", "completed"]
    assert_nothing_lost(project)


@pytest.mark.slow
def test_two_sweeps_given_the_same_sweep_dir_at_once_get_a_dir_each(tmp_path):
    """The first sweep is held running while the second starts; a third, started after both
    ended, uses the dir again (as Hydra would). The dir's name needs quoting in an override."""
    project = project_in(tmp_path)
    same = 'hydra.sweep.dir="multirun/it\'s here"'
    (project / "hang-a").touch()
    first = start(project, "workflow.nodes.work.tag=a", same)
    wait_for(project / "pid-a", first)
    run_bench(project, "-m", "workflow=fault", "workflow.nodes.work.tag=b", same)
    (project / "hang-a").unlink()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    run_bench(project, "-m", "workflow=fault", "workflow.nodes.work.tag=c", same)
    every = runs(project)
    assert [r["status"] for r in every] == ["completed"] * 3
    dirs = {tag(r): Path(r["job_dir"]).parent.name for r in every}
    assert dirs == {"a": "it's here", "b": "it's here-1", "c": "it's here"}
    assert sorted(s["sweep_dir"] for s in sweeps(project)) == [
        str(project / "multirun/it's here")] * 2 + [str(project / "multirun/it's here-1")]
    assert_nothing_lost(project)


@pytest.mark.slow
def test_a_retry_that_succeeds_leaves_a_completed_sweep(tmp_path):
    """A job whose first attempt failed and whose retry completed does not fail its sweep."""
    project = project_in(tmp_path)
    (project / "hang-b").touch()
    sweep = start(project, "workflow.nodes.work.tag=a,b")
    pid = int(wait_for(project / "pid-b", sweep))
    (project / "hang-b").unlink()
    os.kill(pid, signal.SIGKILL)  # a local worker killed: retried like an actor
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, out + err
    assert [s["status"] for s in sweeps(project)] == ["completed"]
    assert sorted((tag(r), r["status"]) for r in runs(project)) == [
        ("a", "completed"), ("b", "completed"), ("b", "failed")]
    assert_nothing_lost(project)


def test_a_sweep_the_launcher_cannot_run_is_refused_before_it_is_recorded(tmp_path):
    """The launcher's settings are checked by the sweep callback before the sweep's row is
    written (a sweep the launcher stops later, Ctrl-C, is failed with the error: test_faults)."""
    project = project_in(tmp_path)
    proc = run_bench(project, "-m", "workflow=fault", "hydra.launcher.num_actors=0",
                     check=False)
    assert proc.returncode == 1
    assert "hydra.launcher.num_actors=0 is out of range: use at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (project / "data/wtb.db").exists()


def test_a_sweep_with_no_workflow_writes_nothing_to_the_store(tmp_path):
    project = project_in(tmp_path)
    proc = run_bench(project, "-m", check=False)
    assert proc.returncode == 1 and "workflow" in proc.stderr
    assert not (project / "data/wtb.db").exists()
    listed = wtb(project, "runs")
    assert listed.returncode == 2 and "no store" in listed.stderr


@pytest.mark.slow
def test_every_status_change_has_its_event(tmp_path):
    project = project_in(tmp_path)
    run_bench(project, "-m", "workflow=fault", "workflow.nodes.work.tag=a")
    [run] = runs(project)
    kinds = [e["kind"] for e in json.loads(wtb(project, "log", run["run_id"], "--json").stdout)]
    assert kinds[0] == "run_started" and kinds[-1] == "run_completed", kinds
