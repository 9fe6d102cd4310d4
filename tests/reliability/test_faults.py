"""Faults on the path a user takes: a job's process killed, the driver killed, Ctrl-C, a
timeout, a job that ends its own process. Each test runs real sweeps (`python -m wtb_conf`
in a project of its own) and ends with `wtb fsck` clean and no run lost: every run the
sweeps started is completed, cached, or failed with its cause.

The node `fault.work` is steered by marker files in the launch dir, named after the job's
`tag`: `hang-TAG` (write its pid to `pid-TAG`, then wait until the marker goes), `exit-TAG`
(os._exit(3))."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import conftest
import pytest
from conftest import run_bench

WORKFLOW = """
state: {x: int}
nodes:
  work: {_target_: fault.work, tag: a}
edges: [[START, work], [work, END]]
cases: {one: {x: 1}}
"""

NODES = """
import os, time
from pathlib import Path
from wtb_conf import launch_dir

def work(state, tag):
    marks = launch_dir()
    if (marks / f"exit-{tag}").exists():
        os._exit(3)
    if (marks / f"hang-{tag}").exists():
        (marks / f"pid-{tag}").write_text(str(os.getpid()))
        while (marks / f"hang-{tag}").exists():
            time.sleep(0.05)
    Path("out.txt").write_text(f"{tag} {state['x']}")
    return {"x": state["x"] + 1}
"""

TAGS = "workflow.nodes.work.tag=a,b,c"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/workflow/fault.yaml").write_text(WORKFLOW)
    (tmp_path / "fault.py").write_text(textwrap.dedent(NODES))
    return tmp_path


def wtb(project: Path, *args: str) -> subprocess.CompletedProcess:
    return conftest.wtb(project, *args, code=None, timeout=300)


def runs(project: Path) -> list[dict]:
    proc = wtb(project, "runs", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def events(project: Path, run_id: str) -> list[str]:
    proc = wtb(project, "log", run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return [e["kind"] for e in json.loads(proc.stdout)]


def tag(run: dict) -> str:
    return next(o for o in run["overrides"] if o.startswith("workflow.nodes.work.tag="))[-1]


def assert_nothing_lost(project: Path) -> None:
    """`wtb fsck` is clean, and no run is left running or failed without a cause."""
    proc = wtb(project, "fsck", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    every = runs(project)
    lost = [r for r in every if r["status"] == "running"
            or (r["status"] == "failed" and not r["error"])]
    assert lost == [], lost


def start(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wtb_conf", "-m", "workflow=fault", *args],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the sweep ended before {path.name} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} never appeared")
        time.sleep(0.05)
    return path.read_text()


@pytest.mark.slow
def test_an_actor_killed_mid_job_is_retried_and_the_others_are_untouched(project):
    (project / "hang-b").touch()
    sweep = start(project, TAGS, "hydra.launcher.local_workers=false")
    pid = int(wait_for(project / "pid-b", sweep))
    (project / "hang-b").unlink()  # the retry runs straight through
    os.kill(pid, signal.SIGKILL)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, out + err
    assert "3 of 3 jobs completed" in out
    by_tag: dict[str, list[dict]] = {}
    for run in runs(project):
        by_tag.setdefault(tag(run), []).append(run)
    assert [r["status"] for r in by_tag["a"]] == ["completed"]
    assert [r["status"] for r in by_tag["c"]] == ["completed"]
    killed, retried = sorted(by_tag["b"], key=lambda r: r["started_at"])
    assert killed["status"] == "failed" and "its actor died" in killed["error"]
    assert killed["error"].endswith("retried")
    assert retried["status"] == "completed"
    assert wtb(project, "runs", "--sweep", "last").returncode == 0
    assert_nothing_lost(project)


@pytest.mark.slow
def test_the_driver_killed_mid_sweep_is_recorded_and_the_same_command_completes(project):
    (project / "hang-c").touch()
    sweep = start(project, TAGS)
    pid_c = int(wait_for(project / "pid-c", sweep))
    os.killpg(sweep.pid, signal.SIGKILL)  # the driver; its local workers die with it
    sweep.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid_c}").exists():
        time.sleep(0.05)
    (project / "hang-c").unlink()
    listed = wtb(project, "runs", "--json")  # a read-only command says so, changes nothing
    assert "their processes are gone" in listed.stderr
    assert {r["status"] for r in json.loads(listed.stdout)} >= {"running"}
    repair = wtb(project, "fsck", "--repair")  # a writing command records what the driver left
    assert "marked failed (lost)" in repair.stdout, repair.stdout + repair.stderr
    before = runs(project)
    c = next(r for r in before if tag(r) == "c")
    assert c["status"] == "failed" and c["error"].startswith("lost: its process")
    assert events(project, c["run_id"])[-1] == "run_lost"
    proc = run_bench(project, "-m", "workflow=fault", TAGS)
    assert "3 of 3 jobs completed" in proc.stdout
    again = [r for r in runs(project) if r["sweep_id"] != c["sweep_id"]]
    done_before = {tag(r) for r in before if r["status"] == "completed"}
    assert {tag(r): r["status"] for r in again} == {
        t: "cached" if t in done_before else "completed" for t in "abc"}
    assert_nothing_lost(project)


@pytest.mark.slow
def test_ctrl_c_marks_the_interrupted_run_with_an_event_and_the_command_resumes(project):
    (project / "hang-b").touch()
    sweep = start(project, TAGS)
    wait_for(project / "pid-b", sweep)
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode != 0
    b = next(r for r in runs(project) if tag(r) == "b")
    assert b["status"] == "failed" and "KeyboardInterrupt" in b["error"], b
    assert events(project, b["run_id"])[-1] == "run_failed"
    show = json.loads(wtb(project, "show", b["run_id"], "--json").stdout)
    assert [c["status"] for c in show["cases"]] == ["failed"]
    (project / "hang-b").unlink()
    proc = run_bench(project, "-m", "workflow=fault", TAGS)
    assert "3 of 3 jobs completed" in proc.stdout
    assert_nothing_lost(project)


@pytest.mark.slow
def test_a_timeout_is_recorded_with_its_cause_on_the_run_and_its_cases(project):
    (project / "hang-b").touch()
    proc = run_bench(project, "-m", "workflow=fault", TAGS, "hydra.launcher.timeout_s=10",
                     check=False)
    assert proc.returncode == 1
    b = next(r for r in runs(project) if tag(r) == "b")
    assert b["status"] == "failed"
    assert b["error"].startswith("TimeoutError: job #1 ran over hydra.launcher.timeout_s=10")
    show = json.loads(wtb(project, "show", b["run_id"], "--json").stdout)
    assert [(c["status"], c["error"]) for c in show["cases"]] == [("failed", b["error"])]
    sweep = json.loads(wtb(project, "runs", "--sweep", "last", "--json").stdout)
    assert {r["status"] for r in sweep} == {"completed", "failed"}
    assert_nothing_lost(project)


@pytest.mark.slow
def test_a_job_that_ends_its_own_process_is_failed_once_with_the_exit_code(project):
    (project / "exit-b").touch()
    proc = run_bench(project, "-m", "workflow=fault", TAGS, check=False)
    assert proc.returncode == 1
    b = [r for r in runs(project) if tag(r) == "b"]
    assert len(b) == 1, "an exit the job chose itself is not retried"
    assert b[0]["status"] == "failed" and "exited with code 3" in b[0]["error"]
    assert "2 of 3 jobs completed" in proc.stdout, proc.stdout + proc.stderr
    assert_nothing_lost(project)


@pytest.mark.slow
def test_under_the_basic_launcher_os_exit_ends_the_sweep_and_the_next_look_records_it(project):
    (project / "exit-b").touch()
    proc = run_bench(project, "-m", "workflow=fault", TAGS, "hydra/launcher=basic",
                     check=False)
    assert proc.returncode == 3  # the job's os._exit(3) ended the driver: nothing can say why
    b = next(r for r in runs(project) if tag(r) == "b")  # a read-only look only says so
    assert b["status"] == "running"
    wtb(project, "fsck", "--repair")  # the next writer records it
    b = next(r for r in runs(project) if tag(r) == "b")
    assert b["status"] == "failed" and b["error"].startswith("lost: its process")
    assert_nothing_lost(project)
