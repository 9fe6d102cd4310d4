"""A failure inside a job's cleanup must not replace the original error or leave the run
running: task.run runs setup, cases, the final commit and scoring on one guarded path.

Sweeps run for real (`python -m wtb_conf -m ... hydra/launcher=basic` in a project of its
own, the real store, real LangGraph) and are read back with `wtb runs/show --json`. Faults
are injected by the node module itself: when a marker file sits next to it, importing it
(the job imports it to build the graph, before any case runs) patches one method:

- `fault-final-commit`: Store.commit_dir raises OSError(ENOSPC) for the final commit only
  (message="final"); the per-checkpoint commits go through;
- `fault-get-state`: LangGraph's get_state raises for the thread of case `bad`;
- `fault-finish-thread`: Store.finish_thread raises sqlite3.OperationalError when it records
  a failed case;
- `fail-node`: the node raises ValueError on case `bad` (x < 0).

Setup failing after the store was opened (admit) is tested in-process: the store must be
closed and the error must propagate.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import conftest
import pytest
from conftest import run_bench
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from wtb_conf.job import admission, task
from wtb_conf.store import Store, open_store

WORKFLOW = """
state: {x: int}
nodes:
  work: {_target_: guarded.work}
edges: [[START, work], [work, END]]
cases:
  good: {x: 1}
  bad: {x: -1}
"""

NODES = """
import errno
from pathlib import Path

HERE = Path(__file__).resolve().parent

if (HERE / "fault-final-commit").exists():
    from wtb_conf.store import Store

    _commit_dir = Store.commit_dir

    def commit_dir(self, path, message="", *args, **kwargs):
        if message == "final":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return _commit_dir(self, path, message, *args, **kwargs)

    Store.commit_dir = commit_dir

if (HERE / "fault-get-state").exists():
    from langgraph.pregel import Pregel

    _get_state = Pregel.get_state

    def get_state(self, config, *args, **kwargs):
        if config["configurable"]["thread_id"].endswith("/bad"):
            raise RuntimeError("the state could not be read (injected)")
        return _get_state(self, config, *args, **kwargs)

    Pregel.get_state = get_state

if (HERE / "fault-finish-thread").exists():
    import sqlite3

    from wtb_conf.store import Store

    _finish_thread = Store.finish_thread

    def finish_thread(self, thread_id, status, *args, **kwargs):
        if status == "failed":
            raise sqlite3.OperationalError("database is locked (injected)")
        return _finish_thread(self, thread_id, status, *args, **kwargs)

    Store.finish_thread = finish_thread


def work(state):
    Path("seen.txt").write_text(str(state["x"]))
    if state["x"] < 0 and (HERE / "fail-node").exists():
        raise ValueError(f"x={state['x']} is negative")
    return {"x": state["x"] + 1}
"""

NODE_ERROR = "ValueError: x=-1 is negative"
COMMIT_ERROR = "OSError: [Errno 28] No space left on device (injected)"
STATE_ERROR = "RuntimeError: the state could not be read (injected)"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/workflow/guarded.yaml").write_text(WORKFLOW)
    (tmp_path / "guarded.py").write_text(textwrap.dedent(NODES))
    return tmp_path


def wtb(project: Path, *args: str) -> object:
    return json.loads(conftest.wtb(project, *args, "--json").stdout)


def sweep(project: Path, *markers: str) -> tuple[subprocess.CompletedProcess, dict]:
    """One job under the basic launcher with `markers` set; its run, as `wtb show` has it."""
    for marker in markers:
        (project / marker).write_text("")
    proc = run_bench(project, "-m", "workflow=guarded", "hydra/launcher=basic", check=False)
    (run,) = wtb(project, "runs")
    return proc, wtb(project, "show", run["run_id"])


def cases(run: dict) -> dict[str, dict]:
    return {c["case"]: c for c in run["cases"]}


@pytest.mark.parametrize(
    ("markers", "error", "bad_error", "committed"),
    [
        # a: the node's error is the run's, not the final commit's
        (["fail-node", "fault-final-commit"], NODE_ERROR, NODE_ERROR, False),
        # d: reading the failed case's state fails: the case keeps its own error
        (["fail-node", "fault-get-state"], NODE_ERROR, NODE_ERROR, True),
        # both cleanups fail
        (["fail-node", "fault-final-commit", "fault-get-state"], NODE_ERROR, NODE_ERROR,
         False),
        # no node fails, the state read does: that is the case's error (not left running)
        (["fault-get-state"], STATE_ERROR, STATE_ERROR, True),
    ],
)
@pytest.mark.slow
def test_a_failing_case_keeps_its_error_whatever_fails_after_it(project, markers, error,
                                                                 bad_error, committed):
    proc, run = sweep(project, *markers)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "1 of 1 jobs failed:\n  job 0 " in proc.stderr
    assert f"{error} — `wtb show {run['run_id'][:8]}`" in proc.stderr
    assert run["status"] == "failed"
    assert run["error"] == error
    # the traceback is the failing case's, and says which case it was
    assert run["traceback"].startswith("case bad:\n")
    assert f"\n{error}\n" in run["traceback"]
    if error == NODE_ERROR:
        assert "guarded.py" in run["traceback"] and "in work\n" in run["traceback"]
    by_case = cases(run)
    assert by_case["good"]["status"] == "completed" and by_case["good"]["error"] is None
    bad = by_case["bad"]
    assert bad["status"] == "failed" and bad["error"] == bad_error
    assert f"\n{bad_error}\n" in bad["traceback"]
    if "fault-get-state" in markers:  # no state, so no due node to name
        assert bad["failed_node"] is None
    else:
        assert bad["failed_node"] == "work" and bad["final_state"] == {"x": -1}
    # the run keeps its files, unless the final commit was what failed
    if committed:
        assert run["commit"] is not None
    else:
        assert run["commit"] is None
    # the cleanup that failed is logged, not lost
    output = proc.stdout + proc.stderr
    if "fault-final-commit" in markers:
        assert f"its files were not committed: {COMMIT_ERROR}" in output
    if "fault-get-state" in markers and "fail-node" in markers:
        assert f"case bad: its state could not be read: {STATE_ERROR}" in output
    assert wtb(project, "log", run["run_id"])[-1]["kind"] == "run_failed"


@pytest.mark.slow
def test_a_failing_final_commit_with_no_failing_case_fails_the_run(project):
    # b: nothing else failed: the commit's error is the run's, and the run is not left running
    proc, run = sweep(project, "fault-final-commit")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert run["status"] == "failed"
    assert run["error"] == COMMIT_ERROR
    assert run["commit"] is None
    assert "commit_dir" in run["traceback"]
    assert run["traceback"].rstrip().endswith(
        f"(its files were not committed: {COMMIT_ERROR})")  # the retry in record_failure
    assert [(c["case"], c["status"], c["error"]) for c in run["cases"]] == [
        ("bad", "completed", None), ("good", "completed", None)]
    assert all(c["commit"] is not None for c in run["cases"])  # each checkpoint's commit
    events = [e["kind"] for e in wtb(project, "log", run["run_id"])]
    assert events[0] == "run_started" and events[-1] == "run_failed"
    assert events.count("run_failed") == 1


@pytest.mark.slow
def test_without_faults_the_run_completes(project):
    proc, run = sweep(project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run["status"] == "completed" and run["error"] is None and run["commit"]
    assert {c["case"]: c["status"] for c in run["cases"]} == {"good": "completed",
                                                             "bad": "completed"}


@pytest.mark.slow
def test_a_failure_recording_the_failed_case_does_not_replace_its_error(project):
    # the thread's record fails; finish_run, which closes the threads left running with the
    # run's error, would still give the case the node's error
    proc, run = sweep(project, "fail-node", "fault-finish-thread")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert run["status"] == "failed"
    assert run["error"] == NODE_ERROR
    assert run["traceback"].startswith("case bad:\n")
    bad = cases(run)["bad"]
    assert bad["status"] == "failed" and bad["error"] == NODE_ERROR


# -- setup that fails after the store was opened (in-process) ------------------------------


def _config(project: Path) -> tuple:
    """A job's task config and Hydra config, as Hydra would hand them to task.run."""
    cfg = OmegaConf.create({
        "workflow": OmegaConf.to_container(OmegaConf.create(WORKFLOW)),
        "storage": {"db_url": "sqlite:///data/wtb.db", "blob_root": "data/blobs",
                    "checkpoints": "data/checkpoints.db", "inline_max": 65536},
        "rerun": False, "share_prefixes": True,
        "compare": {"objective": None, "mode": "max"},
    })
    hydra = OmegaConf.create({"hydra": {
        "runtime": {"cwd": str(project), "output_dir": str(project / "multirun/0"),
                    "choices": {"workflow": "guarded"}},
        "overrides": {"task": ["workflow=guarded"]},
        "job": {"num": 0},
        "sweep": {"dir": str(project / "multirun"), "subdir": "0"},
    }})
    return cfg, hydra


def handles(project: Path) -> list[str]:
    """Files under the project's data/ this process holds open (the store's database)."""
    data = str(project.resolve() / "data")
    out = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith(data):
            out.append(target)
    return out


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("wtb_conf.job.admission.identity_of", Boom("identity failed")),
        ("wtb_conf.job.admission.installed", Boom("the env could not be listed")),
        ("wtb_conf.job.admission.identity_of", KeyboardInterrupt()),  # Ctrl-C in setup too
        ("wtb_conf.store.Store.create_sweep", Boom("the store is busy")),
    ],
)
def test_setup_that_fails_after_the_store_opened_closes_it(project, monkeypatch, target,
                                                           error):
    # c: admit raises after opening the store: the store is closed, the error propagates
    cfg, hydra = _config(project)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", hydra)
    if target.endswith("create_sweep"):
        monkeypatch.delenv(admission.SWEEP_ENV, raising=False)
    else:  # as under the sweep callback
        with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
            monkeypatch.setenv(admission.SWEEP_ENV, store.create_sweep(["workflow=guarded"]))
    opened: list[Store] = []
    closed: list[Store] = []
    real_open, real_close = admission.store_at, Store.close

    def open_store_(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    def close(self):
        closed.append(self)
        real_close(self)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(admission, "store_at", open_store_)
    monkeypatch.setattr(Store, "close", close)
    monkeypatch.setattr(target, fail)
    with pytest.raises(type(error)) as info:
        task.run(cfg)
    assert info.value is error
    assert len(opened) == 1 and closed == opened  # closed once: its engine is disposed
    assert handles(project) == []  # no connection of it left open on the database
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        assert store.runs() == []  # nothing recorded as running
