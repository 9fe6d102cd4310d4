"""Fork, rollback, breakpoints + resume, `wtb rerun RUN` and shared prefixes, the way a user
runs them: `python -m wtb_conf` and `wtb` in a project directory, on the session's Ray.

Every test runs twice: with the store and LangGraph's checkpointer in SQLite files (the
default), and both in one PostgreSQL database of the session's server (the project's own
`conf/storage/default.yaml` names it; `wtb` gets it as `--db`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import conftest
import pytest
import yaml
from conftest import copy_project, run_bench

DEMO = ("-m", "workflow=file_processing")
DB: dict[Path, str] = {}  # a project on PostgreSQL -> its store URL, for `wtb --db`
BASE: dict[Path, list[dict]] = {}  # a project -> the runs of its first sweep, in job order


def new_project(dest: Path, backend: str, request: pytest.FixtureRequest) -> Path:
    """A copy of the demo project; on PostgreSQL, with a new database for its store and
    checkpointer, which its storage config names (shadowing the packaged default)."""
    project = copy_project(dest)
    if backend == "postgresql":
        server = request.getfixturevalue("pg_server")
        db = server.new_database()
        storage = {"db_url": server.url(db), "checkpoints": server.url(db, driver="postgresql"),
                   "blob_root": "data/blobs", "inline_max": 65536}
        (project / "conf/storage").mkdir(parents=True, exist_ok=True)
        (project / "conf/storage/default.yaml").write_text(yaml.safe_dump(storage))
        DB[project] = storage["db_url"]
    return project


def wtb(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    db = ["--db", DB[project]] if project in DB else []
    return conftest.wtb(project, *db, *args, code=0 if check else None)


def show(project: Path, run: str) -> dict:
    return json.loads(wtb(project, "show", run, "--json").stdout)


def new_run(proc: subprocess.CompletedProcess) -> str:
    """The run id a replay command reports (`wtb: run ID STATUS — ...`)."""
    line = next(x for x in proc.stdout.splitlines() if x.startswith("wtb: run "))
    return line.split()[2]


def case(run: dict, name: str) -> dict:
    return next(c for c in run["cases"] if c["case"] == name)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def project(tmp_path_factory, backend, request) -> Path:
    """Two variants of the demo workflow: job 0 runs every node, job 1 shares `load`."""
    project = new_project(tmp_path_factory.mktemp(f"timetravel-{backend}"), backend, request)
    run_bench(project, *DEMO, "variant=drop_invalid,fill_defaults")
    local = {"wtb.db", "checkpoints.db"} & {p.name for p in project.glob("data/*")}
    assert local == (set() if backend == "postgresql" else {"wtb.db", "checkpoints.db"})
    # read now: a test that replays a run makes a later sweep `last`
    BASE[project] = json.loads(wtb(project, "runs", "--sweep", "last", "--json").stdout)
    return project


@pytest.fixture(scope="module")
def base(project) -> list[dict]:
    runs = BASE[project]  # job order
    assert [r["status"] for r in runs] == ["completed", "completed"]
    return runs


@pytest.mark.slow
def test_shared_prefix_runs_once_and_gives_the_same_outputs(project, base, backend, request,
                                                           tmp_path):
    drop, fill = (show(project, r["run_id"]) for r in base)
    for name in ("orders", "returns"):
        assert case(drop, name)["inherited"] == [] and case(drop, name)["parent_thread"] is None
        c = case(fill, name)
        assert c["inherited"] == ["load"]  # the variants differ from `clean` on
        assert c["executed"][:2] == ["clean", "validate"] and "load" not in c["executed"]
        assert c["parent_thread"] == case(drop, name)["thread_id"]
        assert c["checkpoints"][0]["source"] == "fork"
    # Opting out, the same job runs every node itself, and its outputs are the same.
    alone = new_project(tmp_path, backend, request)
    run_bench(alone, *DEMO, "variant=drop_invalid,fill_defaults", "share_prefixes=false")
    unshared = json.loads(wtb(alone, "runs", "--sweep", "last", "--json").stdout)
    assert [r["commit"] for r in unshared] == [r["commit"] for r in base]
    for name in ("orders", "returns"):
        assert case(show(alone, unshared[1]["run_id"]), name)["inherited"] == []
        assert case(show(alone, unshared[1]["run_id"]), name)["executed"][0] == "load"


@pytest.mark.slow
def test_fork_through_the_entry_point(project, base):
    drop, fill = base
    run_bench(project, *DEMO, "variant=fill_defaults", f"+fork.run={drop['run_id'][:10]}",
              "+fork.after=load")
    fork = json.loads(wtb(project, "runs", "--sweep", "last", "--json").stdout)[0]
    assert fork["parent_run"] == drop["run_id"]
    assert fork["commit"] == fill["commit"]  # from load on, the same as running it all
    shown = show(project, fork["run_id"])
    assert shown["lineage"] == [drop["run_id"]]
    assert case(shown, "orders")["inherited"] == ["load"]
    assert case(shown, "orders")["executed"][0] == "clean"
    text = wtb(project, "show", fork["run_id"][:8]).stdout
    assert f"forked from: {drop['run_id'][:8]}" in text and "inherited load" in text


@pytest.mark.slow
def test_bad_fork_configs_are_recorded_failures_naming_the_key(project, base):
    proc = run_bench(project, *DEMO, "+fork.run=0000beef", check=False)
    assert proc.returncode == 1 and "fork.run: no run matches '0000beef'" in proc.stderr
    proc = run_bench(project, *DEMO, f"+fork.run={base[0]['run_id']}", "+fork.after=nope",
                     check=False)
    assert proc.returncode == 1
    assert "fork.after: case 'orders' of run" in proc.stderr
    assert "never ran node 'nope'" in proc.stderr
    proc = run_bench(project, *DEMO, f"+fork.run={base[0]['run_id']}", "+fork.when=now",
                     check=False)
    assert proc.returncode == 1 and "fork.when: unknown key; fork has run," in proc.stderr
    # a checkpoint is copied within one checkpointer: not from another file or database
    other = project / "data/other-checkpoints.db"
    proc = run_bench(project, *DEMO, f"+fork.run={base[0]['run_id']}", "+fork.after=load",
                     f"storage.checkpoints={other}", check=False)
    assert proc.returncode == 1
    assert f"is not in this job's checkpointer ({other}); fork with the storage config " \
           "(storage.checkpoints) the run used" in proc.stderr


@pytest.mark.slow
def test_rerun_one_run_from_the_store_gives_the_same_commit(project, base):
    proc = wtb(project, "rerun", base[0]["run_id"][:8])
    again = show(project, new_run(proc))
    assert again["status"] == "completed" and again["cached_from"] is None
    assert again["run_id"] != base[0]["run_id"] and again["commit"] == base[0]["commit"]
    assert again["overrides"] == ["rerun=True"]


@pytest.mark.slow
def test_rollback_then_resume(project, base, tmp_path):
    drop = show(project, base[0]["run_id"])
    cp = next(c for c in case(drop, "orders")["checkpoints"] if c["nodes"] == ["clean"])
    proc = wtb(project, "rollback", drop["run_id"][:8], "--checkpoint", cp["checkpoint_id"][:20])
    rolled = show(project, new_run(proc))
    assert rolled["status"] == "paused" and rolled["parent_run"] == drop["run_id"]
    assert [c["case"] for c in rolled["cases"]] == ["orders"]
    state = case(rolled, "orders")["final_state"]
    assert state["log"] == ["load", "drop_invalid"] and "total_amount" not in state
    wtb(project, "restore", rolled["run_id"], "--to", str(tmp_path / "rb"))
    assert sorted(p.name for p in (tmp_path / "rb/orders").iterdir()) == ["clean.csv",
                                                                          "loaded.json"]
    proc = wtb(project, "resume", rolled["run_id"][:8])
    resumed = show(project, new_run(proc))
    assert resumed["status"] == "completed"
    assert resumed["lineage"] == [rolled["run_id"], drop["run_id"]]
    assert [c["case"] for c in resumed["cases"]] == ["orders"]  # the case rolled back, only
    assert case(resumed, "orders")["executed"][0] == "validate"
    assert case(resumed, "orders")["commit"] == case(drop, "orders")["commit"]


@pytest.mark.slow
def test_breakpoint_pauses_and_resume_sets_state(project):
    proc = run_bench(project, *DEMO, "variant=drop_invalid",
                     "+workflow.interrupt_before=[summarize]")
    assert "1 paused (`wtb resume RUN` continues)" in proc.stdout
    paused = json.loads(wtb(project, "runs", "--sweep", "last", "--json").stdout)[0]
    shown = show(project, paused["run_id"])
    assert shown["status"] == "paused"
    assert all(c["status"] == "paused" and "summarize" not in c["executed"]
               for c in shown["cases"])
    proc = wtb(project, "resume", paused["run_id"][:8], "--set", "quarantined=99",
               "--set", "log=[x, y]")  # YAML, and its comma does not make a sweep
    assert proc.stdout.count("wtb: run ") == 1
    resumed = show(project, new_run(proc))
    assert resumed["status"] == "completed"
    for c in resumed["cases"]:
        assert c["executed"] == ["summarize"] and c["final_state"]["quarantined"] == 99
        assert c["final_state"]["log"][-3:] == ["x", "y", "summarize"]  # `log` appends
        assert "rows_out" in c["final_state"]


@pytest.mark.slow
def test_resume_and_rollback_refuse_bad_input(project, base):
    run = base[0]["run_id"][:8]
    proc = wtb(project, "resume", run, check=False)
    assert proc.returncode == 1 and "only paused and failed runs resume" in proc.stderr
    proc = wtb(project, "rollback", run, "--checkpoint", "zz", check=False)
    assert proc.returncode == 1 and "--checkpoint: no checkpoints of run" in proc.stderr
    proc = wtb(project, "resume", "last", "--set", "nope=1", check=False)
    assert proc.returncode == 1 and "KEY one of the state fields input_csv" in proc.stderr
    proc = wtb(project, "rerun", check=False)
    assert proc.returncode == 1 and "give one run to rerun (wtb rerun RUN)" in proc.stderr
    # a cache hit (in-process, no Ray needed) has no checkpoints of its own
    run_bench(project, *DEMO, "variant=drop_invalid", "hydra/launcher=basic")
    cached = show(project, "last")
    assert cached["status"] == "cached"
    proc = wtb(project, "rollback", "last", "--checkpoint", "1", check=False)
    assert proc.returncode == 1
    assert f"is a cache hit of run {cached['cached_from'][:8]}" in proc.stderr


@pytest.mark.slow
def test_input_files_are_stored_identity_and_replayed(project, base):
    """Last in this module: it changes an input file of the project."""
    run = show(project, base[0]["run_id"])
    assert run["inputs_commit"]
    orders = project / "experiments/file_processing/data/orders.csv"
    original = orders.read_text()
    orders.write_text(original + "99,north,widget,10.00,1\n")
    # a changed input file: not a job cache hit, and no prefix is shared with the old runs
    run_bench(project, *DEMO, "variant=drop_invalid")
    fresh = show(project, "last")
    assert fresh["status"] == "completed" and fresh["cached_from"] is None
    assert fresh["inputs_commit"] != run["inputs_commit"]
    assert all(c["inherited"] == [] for c in fresh["cases"])
    assert case(fresh, "orders")["final_state"]["rows_in"] == 13
    # `wtb rerun` reads the files as the run stored them
    proc = wtb(project, "rerun", run["run_id"][:8])
    assert "file_processing/data/orders.csv changed since run" in proc.stdout
    again = show(project, new_run(proc))
    assert case(again, "orders")["final_state"]["rows_in"] == 12
    assert case(again, "returns")["commit"] == case(run, "returns")["commit"]
    assert orders.read_text().endswith("99,north,widget,10.00,1\n")  # the project untouched
