"""The job cache and resumable sweeps: a job whose identity (config, env lock, code) already
completed is reported as cached; the same command resumes a failed or interrupted sweep."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import copy_project, run_bench, wtb

from wtb_conf.store import open_store


def sweeps(project: Path) -> list[list[dict]]:
    """Every sweep's runs, oldest sweep first."""
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        runs = store.runs()
        order = list(dict.fromkeys(r["sweep_id"] for r in runs))
        return [[store.run(r["run_id"]) for r in sorted(runs, key=lambda r: r["job_num"])
                 if r["sweep_id"] == s] for s in order]


@pytest.mark.slow
def test_rerunning_the_demo_reports_every_job_cached(tmp_path):
    project = copy_project(tmp_path)
    run_bench(project, "-m", "+experiment=demo")
    proc = run_bench(project, "-m", "+experiment=demo")
    assert "4 of 4 jobs completed (4 cached)" in proc.stdout
    first, second = sweeps(project)
    for a, b in zip(first, second, strict=True):
        assert a["status"] == "completed" and b["status"] == "cached"
        assert b["cached_from"] == a["run_id"] and b["commit"] == a["commit"]
        assert b["job_key"] == a["job_key"] and b["metrics"] == a["metrics"]
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        for b in second:  # scored as a hit, then closed: its log ends with run_cached
            assert [e["kind"] for e in store.events(b["run_id"])][-2:] == ["evaluated",
                                                                           "run_cached"]
    # rerun=true bypasses the cache; the workflow is deterministic, so the commits match
    run_bench(project, "-m", "+experiment=demo", "rerun=true")
    third = sweeps(project)[2]
    assert [r["status"] for r in third] == ["completed"] * 4
    assert [r["commit"] for r in third] == [r["commit"] for r in first]
    # a change to the node code is a new identity
    nodes = project / "experiments/file_processing/nodes.py"
    nodes.write_text(nodes.read_text() + "\n# a change\n")
    run_bench(project, "-m", "+experiment=demo")
    assert [r["status"] for r in sweeps(project)[3]] == ["completed"] * 4


FLAKY = """
state: {x: int}
nodes:
  work: {_target_: flaky.work}
edges: [[START, work], [work, END]]
cases: {one: {x: 1}}
"""

FLAKY_NODES = """
import time
from pathlib import Path
from wtb_conf import launch_dir

def work(state, **_):
    if (launch_dir() / "fail").exists():
        raise RuntimeError("the fail marker is there")
    while (launch_dir() / "slow").exists():
        time.sleep(0.05)
    Path("done.txt").write_text("done")
    return {"x": state["x"] + 1}
"""


@pytest.fixture
def flaky(tmp_path) -> Path:
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/variant").mkdir()
    (tmp_path / "conf/workflow/flaky.yaml").write_text(FLAKY)
    (tmp_path / "conf/variant/a.yaml").write_text("# @package workflow\ncases: {one: {x: 10}}\n")
    (tmp_path / "conf/variant/b.yaml").write_text(
        "# @package workflow\nnodes: {work: {_target_: flaky.work, tag: b}}\n")
    (tmp_path / "flaky.py").write_text(textwrap.dedent(FLAKY_NODES))
    return tmp_path


@pytest.mark.slow
def test_rerun_failed_reruns_only_the_failed_jobs(flaky):
    run_bench(flaky, "-m", "workflow=flaky", "variant=a", "hydra/launcher=basic")
    (flaky / "fail").write_text("")
    proc = run_bench(flaky, "-m", "workflow=flaky", "variant=a,b", "hydra/launcher=basic",
                     check=False)
    assert proc.returncode != 0 and "1 of 2 jobs failed" in proc.stderr
    (flaky / "fail").unlink()
    rerun = wtb(flaky, "rerun", "--failed", "last")
    assert "rerunning sweep" in rerun.stdout
    last = sweeps(flaky)[-1]
    assert [(r["overrides"][1], r["status"]) for r in last] == [
        ("variant=a", "cached"), ("variant=b", "completed")]


@pytest.mark.slow
def test_ctrl_c_leaves_completed_runs_and_the_same_command_resumes(flaky):
    (flaky / "slow").write_text("")
    cmd = [sys.executable, "-m", "wtb_conf", "-m", "workflow=flaky", "variant=a,b",
           "hydra/launcher=basic"]
    # variant=a is made fast by running it once first; variant=b then hangs on the marker
    (flaky / "slow").unlink()
    run_bench(flaky, "-m", "workflow=flaky", "variant=a", "hydra/launcher=basic")
    (flaky / "slow").write_text("")
    proc = subprocess.Popen(cmd, cwd=flaky, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = sweeps(flaky)[-1] if len(sweeps(flaky)) > 1 else []
        if any(r["overrides"][1] == "variant=b" and r["status"] == "running" for r in runs):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("variant=b never started")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    interrupted = sweeps(flaky)[-1]
    assert [(r["overrides"][1], r["status"]) for r in interrupted] == [
        ("variant=a", "cached"), ("variant=b", "failed")]
    assert "interrupted" in interrupted[1]["error"]
    (flaky / "slow").unlink()
    done = subprocess.run(cmd, cwd=flaky, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [(r["overrides"][1], r["status"]) for r in sweeps(flaky)[-1]] == [
        ("variant=a", "cached"), ("variant=b", "completed")]


@pytest.mark.slow
def test_a_cache_hit_whose_files_lost_a_blob_runs_again(tmp_path):
    """#27 item 9: a hit is served only when every blob of its commit can be read."""
    project = copy_project(tmp_path)
    run_bench(project, "-m", "+experiment=demo", "storage.inline_max=0")  # every blob a file
    first = sweeps(project)[0]
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        tree = store.tree(first[0]["commit"])
        lost = next(e.blob for path, e in sorted(tree.items()) if path.endswith("summary.json"))
        store.blobs.path(lost).unlink()
        hit = [r for r in first if lost in {e.blob for e in store.tree(r["commit"]).values()}]
    proc = run_bench(project, "-m", "+experiment=demo", "storage.inline_max=0")
    second = sweeps(project)[1]
    # the first job that needs the blob runs again and stores it anew; one checked after
    # that may be a hit again, one whose files never needed it is one from the start
    assert {r["status"] for r in second if r["job_num"] == hit[0]["job_num"]} == {"completed"}
    assert all(r["status"] == "cached" for r in second if r["job_num"] not in
               {h["job_num"] for h in hit})
    assert "not a cache hit" in proc.stderr + proc.stdout
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        assert not store.missing_blobs(first[0]["commit"])
    wtb(project, "fsck")  # exit 0: the rerun stored the blob again
