"""Replays (`wtb rerun RUN`, `wtb resume`) as sweeps of their own: `wtb rerun --failed` of a
replay sweep once its temp config dir is gone, a replay interrupted with Ctrl-C, and a replay
that reports its own run while another sweep runs in the same store. Real sweeps throughout,
on a one-node workflow whose node fails or waits on marker files in the project."""

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

from wtb_conf.cli.replay import replay_of
from wtb_conf.store import open_store

GATE = """
state: {x: int}
nodes:
  work: {_target_: gate.work, need: ok, hold: false}
edges: [[START, work], [work, END]]
cases: {one: {x: 1}}
"""

GATE_NODES = """
import time
from pathlib import Path
from wtb_conf import launch_dir

def work(state, need="ok", hold=False):
    here = launch_dir()
    if hold:  # the test sees the job running, and holds it there while `hold` exists
        (here / "started").touch()
        while (here / "hold").exists():
            time.sleep(0.05)
    if not (here / need).exists():
        raise RuntimeError(f"{need} is missing")
    Path("out.txt").write_text(need)
    return {"x": state["x"] + 1}
"""

HOLD = "workflow.nodes.work.hold=True"  # as Hydra records it


@pytest.fixture
def gate(tmp_path) -> Path:
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/workflow/gate.yaml").write_text(GATE)
    (tmp_path / "gate.py").write_text(textwrap.dedent(GATE_NODES))
    return tmp_path


def wtb(project: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    return conftest.wtb(project, *args, code=code)


def reported(stdout: str) -> list[str]:
    """The run ids a replay command reports (`wtb: run ID STATUS — ...`)."""
    return [x.split()[2] for x in stdout.splitlines() if x.startswith("wtb: run ")]


def show(project: Path, run: str) -> dict:
    return json.loads(wtb(project, "show", run, "--json").stdout)


def last_run(project: Path) -> dict:
    return json.loads(wtb(project, "runs", "--sweep", "last", "--json").stdout)[-1]


def store_of(project: Path):
    return open_store(str(project / "data/wtb.db"), project / "data/blobs")


def sweep_count(project: Path) -> int:
    with store_of(project) as store:
        return len({r["sweep_id"] for r in store.runs()})


def held(project: Path, *args: str) -> subprocess.Popen:
    """`wtb ARGS` in a process group of its own (as a terminal runs it), once its job is
    running and held by the `hold` marker."""
    (project / "hold").write_text("")
    (project / "started").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "wtb_conf.cli", *args], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while not (project / "started").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the replay's job never started\n{out}\n{err}")
        time.sleep(0.1)
    return proc


@pytest.mark.slow
def test_rerun_failed_of_a_replay_sweep_after_its_temp_dir_is_gone(gate):
    run_bench(gate, "-m", "workflow=gate", check=False)  # `ok` is missing: the job fails
    base = last_run(gate)
    assert base["status"] == "failed"
    proc = wtb(gate, "rerun", base["run_id"][:8], code=1)
    [first] = reported(proc.stdout)
    failed = show(gate, first)
    assert failed["status"] == "failed" and failed["overrides"] == ["rerun=True"]
    with store_of(gate) as store:
        argv = store.sweep(failed["sweep_id"])["argv"]
        record = replay_of(store, failed["sweep_id"])
    assert not Path(argv[argv.index("--config-path") + 1]).exists()  # the temp dir is gone
    assert record["replay"] == "rerun" and record["run"] == base["run_id"]
    assert record["cwd"] == str(gate) and record["rerun_of"] is None

    (gate / "ok").write_text("")
    proc = wtb(gate, "rerun", "--failed", failed["sweep_id"][:8])
    [again] = reported(proc.stdout)
    again = show(gate, again)
    assert again["status"] == "completed" and again["sweep_id"] != failed["sweep_id"]
    assert again["overrides"] == ["rerun=True"]
    assert again["config_yaml"] == failed["config_yaml"]
    with store_of(gate) as store:
        assert replay_of(store, again["sweep_id"]) == {**record,
                                                       "rerun_of": failed["sweep_id"]}
    # nothing failed in that one: nothing runs (rerun=true would run it again)
    before = sweep_count(gate)
    proc = wtb(gate, "rerun", "--failed", again["sweep_id"][:8])
    assert "no failed or interrupted jobs: nothing to rerun" in proc.stdout
    assert sweep_count(gate) == before

    # a replay with a comma override is a sweep of two jobs; only the failed one runs again
    proc = wtb(gate, "rerun", base["run_id"][:8], "workflow.nodes.work.need=ok,ok2", code=1)
    two = [show(gate, r) for r in reported(proc.stdout)]
    assert [r["status"] for r in two] == ["completed", "failed"]
    (gate / "ok2").write_text("")
    wtb(gate, "rerun", "--failed", two[0]["sweep_id"][:8])
    runs = json.loads(wtb(gate, "runs", "--sweep", "last", "--json").stdout)
    assert [(r["overrides"], r["status"]) for r in runs] == [
        (["rerun=False", "workflow.nodes.work.need=ok"], "cached"),
        (["rerun=False", "workflow.nodes.work.need=ok2"], "completed")]


@pytest.mark.slow
def test_an_interrupted_resume_is_rerun_from_its_stored_config(gate):
    run_bench(gate, "-m", "workflow=gate", check=False)
    base = last_run(gate)
    assert base["status"] == "failed"
    (gate / "ok").write_text("")
    proc = held(gate, "resume", base["run_id"][:8], HOLD)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals `wtb` and its child
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    [stopped] = reported(out)
    stopped = show(gate, stopped)
    assert stopped["status"] == "failed" and "interrupted" in stopped["error"], out + err
    with store_of(gate) as store:
        assert replay_of(store, stopped["sweep_id"])["replay"] == "resume"

    (gate / "hold").unlink()
    proc = wtb(gate, "rerun", "--failed", stopped["sweep_id"][:8])
    [done] = reported(proc.stdout)
    done = show(gate, done)
    assert done["status"] == "completed" and done["parent_run"] == base["run_id"]
    assert done["overrides"] == stopped["overrides"] == [f"+fork.run={base['run_id']}", HOLD]
    assert done["config_yaml"] == stopped["config_yaml"]


@pytest.mark.slow
def test_a_replay_reports_its_own_run_while_another_sweep_runs(gate):
    (gate / "ok").write_text("")
    run_bench(gate, "-m", "workflow=gate")
    base = last_run(gate)
    proc = held(gate, "rerun", base["run_id"][:8], HOLD)
    # While the replay's job is held, another sweep starts, runs and ends in the same store.
    run_bench(gate, "-m", "workflow=gate", "rerun=true", "hydra/launcher=basic")
    other = last_run(gate)
    assert other["status"] == "completed"
    (gate / "hold").unlink()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    [mine] = reported(out)
    mine = show(gate, mine)
    assert mine["overrides"] == ["rerun=True", HOLD] and mine["status"] == "completed"
    assert mine["sweep_id"] != other["sweep_id"] and other["run_id"][:8] not in out
    with store_of(gate) as store:
        assert store.last_sweep() == other["sweep_id"]  # the newest sweep is not the replay's
