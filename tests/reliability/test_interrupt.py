"""Ctrl-C (and SIGTERM) at any point of a sweep: it ends within seconds, leaves no process,
says so in one line, and the same command (or `wtb rerun --failed`) runs only what is missing,
with and without rerun=true. Also: a node's os._exit, and a retry after a kill in the second
node (#22 items 1-3, #27 items 2 and 12).

The interrupt is sent to the sweep's whole process group, as a terminal's Ctrl-C is. Points
that depend on time (while Python imports, while workers fork, while the planner runs) land
wherever this machine's speed puts them: whatever they hit must hold the same promises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_bench
from test_faults import assert_nothing_lost, runs, tag, wait_for, wtb

WORKFLOW = """
state: {x: int}
nodes:
  first: {_target_: fault.first}
  work: {_target_: fault.work, tag: a}
edges: [[START, first], [first, work], [work, END]]
cases: {one: {x: 1}}
"""

# Each execution of `work` appends its tag to ran.txt, so a test counts what really ran.
NODES = """
import os, time
from pathlib import Path
from wtb_conf import launch_dir

def first(state):
    Path("first.txt").write_text("first")
    return {"x": state["x"] + 1}

def work(state, tag):
    marks = launch_dir()
    with open(marks / "ran.txt", "a") as f:
        f.write(tag + "\\n")
    if (marks / f"exit-{tag}").exists():
        os._exit(3)
    if (marks / f"hang-{tag}").exists():
        (marks / f"pid-{tag}").write_text(str(os.getpid()))
        while (marks / f"hang-{tag}").exists():
            time.sleep(0.05)
    Path("out.txt").write_text(f"{tag} {state['x']}")
    return {"x": state["x"] + 1}
"""

TAGS = "workflow.nodes.work.tag=a,b,c,d"
EXIT_WITHIN_S = 10  # the issue asks for 5; the margin is for a loaded 2-core machine


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/workflow/fault.yaml").write_text(WORKFLOW)
    (tmp_path / "fault.py").write_text(NODES)
    return tmp_path


def start(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wtb_conf", "-m", "workflow=fault", *args], cwd=project,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def ran(project: Path) -> list[str]:
    path = project / "ran.txt"
    return path.read_text().split() if path.exists() else []


def interrupt(sweep: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    """Send `sig` to the sweep's process group; its output once it ended. Fails if it takes
    longer than EXIT_WITHIN_S or leaves any process of its session behind."""
    os.killpg(sweep.pid, sig)
    try:
        out, _ = sweep.communicate(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(sweep.pid, signal.SIGKILL)
        out, _ = sweep.communicate()
        pytest.fail(f"the sweep did not end within {EXIT_WITHIN_S} s of {sig!r}:\n{out}")
    deadline = time.monotonic() + 5  # a killed worker is reaped by the kernel, not at once
    while (left := _session(sweep.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}\n{out}"
    return out


def _session(sid: int) -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-s", str(sid)], capture_output=True, text=True)
    return found.stdout.splitlines()


def assert_one_line(out: str, sweep: subprocess.Popen) -> str:
    assert "Traceback" not in out, out
    assert sweep.returncode == 1, out  # docs/cli.md: a sweep that ended early exits 1
    said = [line for line in out.splitlines() if line.startswith("interrupted")]
    assert len(said) == 1, out
    return said[0]


def finish(project: Path, *args: str) -> subprocess.CompletedProcess:
    proc = run_bench(project, "-m", "workflow=fault", *args, timeout=300)
    assert "4 of 4 jobs completed" in proc.stdout
    return proc


def sweep_runs(project: Path, sweep: str = "last") -> list[dict]:
    import json

    proc = wtb(project, "runs", "--sweep", sweep, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("rerun", [False, True], ids=["cache", "rerun=true"])
@pytest.mark.slow
def test_ctrl_c_mid_job_then_the_same_command_runs_only_what_is_missing(project, rerun):
    args = [TAGS, *(["rerun=true"] if rerun else [])]
    (project / "hang-c").touch()
    sweep = start(project, *args)
    wait_for(project / "pid-c", sweep)
    said = assert_one_line(interrupt(sweep), sweep)
    done = {tag(r) for r in sweep_runs(project) if r["status"] == "completed"}
    assert "c" not in done
    assert f"interrupted: {len(done)} of 4 jobs done" in said, said
    assert_nothing_lost(project)
    before = ran(project)
    (project / "hang-c").unlink()
    finish(project, *args)
    again = ran(project)[len(before):]
    assert sorted(again) == sorted(set("abcd") - done), "only the missing jobs ran again"
    assert {tag(r): r["status"] for r in sweep_runs(project)} == {
        t: "cached" if t in done else "completed" for t in "abcd"}
    assert_nothing_lost(project)


@pytest.mark.parametrize("after_s", [0.3, 1.0, 2.0, 3.0, 4.5])
@pytest.mark.slow
def test_ctrl_c_at_any_moment_ends_in_one_line_and_the_same_command_finishes(project, after_s):
    """From Python's imports to the final table, depending on where the moment lands."""
    sweep = start(project, TAGS)
    time.sleep(after_s)
    out = interrupt(sweep)
    if sweep.returncode == 0:  # it had finished before the signal came
        assert "4 of 4 jobs completed" in out and "Traceback" not in out
        return
    said = assert_one_line(out, sweep)
    assert said.startswith(("interrupted: ", "interrupted before the sweep started")), said
    done = {tag(r) for r in runs(project) if r["status"] == "completed"} \
        if (project / "data/wtb.db").exists() else set()
    before = ran(project)
    finish(project, TAGS)
    assert sorted(ran(project)[len(before):]) == sorted(set("abcd") - done)
    assert_nothing_lost(project)


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(project):
    (project / "hang-b").touch()
    sweep = start(project, TAGS)
    wait_for(project / "pid-b", sweep)
    assert_one_line(interrupt(sweep, signal.SIGTERM), sweep)
    assert_nothing_lost(project)


@pytest.mark.slow
def test_wtb_rerun_failed_after_ctrl_c_with_rerun_true_runs_only_the_missing_jobs(project):
    (project / "hang-b").touch()
    sweep = start(project, TAGS, "rerun=true", "hydra.launcher.num_cpus=2")  # one at a time
    wait_for(project / "pid-b", sweep)
    assert_one_line(interrupt(sweep), sweep)
    first = sweep_runs(project)
    done = {tag(r) for r in first if r["status"] == "completed"}
    assert done == {"a"}
    (project / "hang-b").unlink()
    before = ran(project)
    proc = wtb(project, "rerun", "--failed", first[0]["sweep_id"][:8])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(3 failed, interrupted or never started jobs)" in proc.stdout, proc.stdout
    assert sorted(ran(project)[len(before):]) == ["b", "c", "d"]
    assert_nothing_lost(project)


def test_a_node_that_ends_its_process_gives_the_summary_and_no_traceback(project):
    (project / "exit-b").touch()
    proc = run_bench(project, "-m", "workflow=fault", TAGS, check=False, timeout=300)
    assert proc.returncode == 1
    assert "3 of 4 jobs completed" in proc.stdout, proc.stdout + proc.stderr
    assert "exited with code 3" in proc.stderr
    for noise in ("Traceback", "Error executing job", "ended early"):
        assert noise not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("local", [True, False], ids=["local worker", "ray actor"])
@pytest.mark.slow
def test_a_job_killed_in_its_second_node_is_retried_from_a_clean_case_dir(project, local):
    """The jobs share the `first` node: a retry restored that prefix into the case dir the
    killed attempt had left (FileExistsError); it must start clean."""
    (project / "hang-b").touch()
    sweep = start(project, TAGS, f"hydra.launcher.local_workers={str(local).lower()}")
    pid = int(wait_for(project / "pid-b", sweep, timeout=300))
    (project / "hang-b").unlink()  # the retry runs straight through
    os.kill(pid, signal.SIGKILL)
    out, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, out
    assert "4 of 4 jobs completed" in out
    b = sorted((r for r in runs(project) if tag(r) == "b"), key=lambda r: r["started_at"])
    assert [r["status"] for r in b] == ["failed", "completed"], b
    assert_nothing_lost(project)
