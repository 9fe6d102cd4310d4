"""End to end: `python -m wtb_conf` as a subprocess, Hydra's sweeper and basic launcher, a real
LangGraph SqliteSaver, the real store. Nothing on this path is mocked. The demo sweep runs on
PostgreSQL too (the store and LangGraph's PostgresSaver, the packaged storage=postgres)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import copy_project, run_bench

from wtb_conf.store import open_store


def store_of(project: Path):
    return open_store(str(project / "data/wtb.db"), project / "data/blobs")


def test_demo_sweep_records_four_completed_runs(demo):
    with store_of(demo) as store:
        runs = store.runs(store.last_sweep())
    assert [r["job_num"] for r in runs] == [0, 1, 2, 3]
    assert {r["status"] for r in runs} == {"completed"}
    combos = {tuple(o for o in r["overrides"] if not o.startswith("+")) for r in runs}
    assert combos == {
        (f"variant={v}", f"workflow.routes.validate.router.max_invalid={t}")
        for v in ("drop_invalid", "fill_defaults") for t in ("0.1", "0.3")
    }
    assert runs[0]["checkpoints"] >= 12  # the others may fork from its shared prefix
    for r in runs:
        assert r["commit"] and r["checkpoints"] > 0
        assert r["metrics"]["orders/rows_in"] == 12 and r["metrics"]["returns/rows_in"] == 8


def test_variants_and_params_change_the_outputs(demo):
    with store_of(demo) as store:
        runs = {tuple(r["overrides"][:2]): r for r in store.runs(store.last_sweep())}
        strict = "workflow.routes.validate.router.max_invalid=0.1"
        drop_strict = runs[("variant=drop_invalid", strict)]
        fill_strict = runs[("variant=fill_defaults", strict)]
        assert drop_strict["metrics"]["orders/rows_out"] == 9
        assert fill_strict["metrics"]["orders/rows_out"] == 12
        # drop_invalid rejects 25% of orders: over 0.1 the route goes through quarantine
        tree = store.tree(drop_strict["commit"])
        assert "orders/quarantine.csv" in tree and "orders/report.md" in tree
        assert "orders/quarantine.csv" not in store.tree(fill_strict["commit"])


def test_every_checkpoint_is_linked_to_a_commit_of_the_case_dir(demo):
    with store_of(demo) as store:
        run = store.runs(store.last_sweep())[0]
        links = store.checkpoints(run["run_id"])
        threads = store.threads(run["run_id"])
    assert {t["case"] for t in threads} == {"orders", "returns"}
    # The links point at real LangGraph checkpoints in the sibling checkpoints.db.
    con = sqlite3.connect(demo / "data/checkpoints.db")
    for link in links:
        row = con.execute(
            "SELECT count(*) FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
            "AND checkpoint_id = ?",
            (link["thread_id"], link["checkpoint_ns"], link["checkpoint_id"]),
        ).fetchone()
        assert row == (1,), link
    orders = [link for link in links if link["case"] == "orders"]
    assert [link["step"] for link in orders] == list(range(-1, len(orders) - 1))
    assert [n for link in orders for n in link["nodes"]][:3] == ["load", "clean", "validate"]


def test_restore_at_a_checkpoint_gives_the_files_as_they_were(demo, tmp_path):
    with store_of(demo) as store:
        run = store.runs(store.last_sweep())[0]
        links = [c for c in store.checkpoints(run["run_id"]) if c["case"] == "orders"]
        after_load = next(c for c in links if c["nodes"] == ["load"])
        after_clean = next(c for c in links if c["nodes"] == ["clean"])
        assert store.restore(after_load["commit"], tmp_path / "a") == ["loaded.json"]
        assert store.restore(after_clean["commit"], tmp_path / "b") == ["clean.csv", "loaded.json"]
        final = store.restore(run["commit"], tmp_path / "final")
    assert "orders/summary.json" in final and "returns/report.md" in final
    job_out = Path(run["job_dir"]) / "out"
    for rel in final:
        assert (tmp_path / "final" / rel).read_bytes() == (job_out / rel).read_bytes()


def test_identical_outputs_are_stored_once(demo):
    from sqlalchemy import text

    with store_of(demo) as store, store.engine.connect() as c:
        runs = store.runs(store.last_sweep())
        # loaded.json is the same in all 4 runs: one blob, stored once
        ids = {store.tree(r["commit"])["orders/loaded.json"].blob for r in runs}
        assert len(ids) == 1
        rows = c.execute(text("SELECT count(*) FROM blobs WHERE id = :i"), {"i": ids.pop()})
        assert rows.scalar_one() == 1


def wtb(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wtb_conf.cli", *args], cwd=project,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_sweep_on_postgresql(pg_server, tmp_path):
    """The demo with `storage=postgres`, its URL from the environment as a team would set it
    (a plain libpq URL: the store gets psycopg's driver name, the checkpointer defaults to
    the same database); no database file is written, and wtb reads it all by URL."""
    db = pg_server.new_database()
    libpq = pg_server.url(db, driver="postgresql")
    project = copy_project(tmp_path / "project")
    sweep = subprocess.run([sys.executable, "-m", "wtb_conf", "-m", "+experiment=demo",
                            "storage=postgres"], cwd=project, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "WTB_DB_URL": libpq})
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert not list(project.glob("data/*.db*"))
    url = pg_server.url(db)  # postgresql+psycopg://, as storage.db_url is stored
    proc = wtb(project, "--db", url, "runs", "--sweep", "last", "--json")
    runs = json.loads(proc.stdout)
    assert [r["status"] for r in runs] == ["completed"] * 4, proc.stderr
    assert {r["metrics"]["orders/rows_in"] for r in runs} == {12}
    shown = json.loads(wtb(project, "--db", url, "show", runs[0]["run_id"], "--json").stdout)
    storage = yaml.safe_load(shown["config_yaml"])["storage"]  # resolved: a replay's store
    assert (storage["db_url"], storage["checkpoints"]) == (libpq, libpq)
    orders = next(c for c in shown["cases"] if c["case"] == "orders")
    after_clean = next(c for c in orders["checkpoints"] if c["nodes"] == ["clean"])
    proc = wtb(project, "--db", url, "restore", runs[0]["run_id"], "--checkpoint",
               after_clean["checkpoint_id"], "--to", str(tmp_path / "at-clean"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "at-clean").iterdir()) == ["clean.csv",
                                                                        "loaded.json"]
    # every link's checkpoint is in LangGraph's tables: --checkpoints by URL, or by default
    # the --db database
    for extra in (["--checkpoints", libpq], []):
        proc = wtb(project, "--db", url, "fsck", *extra, "--json")
        report = json.loads(proc.stdout)
        assert proc.returncode == 0 and report["problems"] == [], proc.stdout + proc.stderr
        assert report["checked"]["links"] >= 12
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("DELETE FROM checkpoints WHERE checkpoint_id = %s",
                     (after_clean["checkpoint_id"],))
    proc = wtb(project, "--db", url, "fsck", "--checkpoints", libpq)
    assert proc.returncode == 1
    assert f"link_missing_checkpoint: checkpoint {after_clean['checkpoint_id']}" in proc.stdout
    assert "@127.0.0.1" in proc.stdout  # it names the database


USER_WORKFLOW = """
state:
  x: int
nodes:
  step1: {_target_: mynodes.bump, by: 1}
  step2: {_target_: mynodes.bump, by: 10}
edges: [[START, step1], [step1, step2], [step2, END]]
cases:
  one: {x: 1}
  two: {x: 2}
metrics: {x: x}
"""


@pytest.fixture
def user_project(tmp_path) -> Path:
    """A project of a user's own: conf/ groups and a node module, nothing else."""
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/variant").mkdir()
    (tmp_path / "conf/workflow/mine.yaml").write_text(USER_WORKFLOW)
    (tmp_path / "conf/variant/a.yaml").write_text(
        "# @package workflow\nnodes: {step2: {by: 100}}\n")
    (tmp_path / "conf/variant/b.yaml").write_text(
        "# @package workflow\nnodes: {step2: {_target_: mynodes.explode}}\n")
    (tmp_path / "conf/variant/typo.yaml").write_text(
        "# @package workflow\nnodes: {step2: {_target_: mynodes.bmup}}\n")
    (tmp_path / "mynodes.py").write_text(textwrap.dedent("""
        from pathlib import Path

        def bump(state, by):
            Path(f"x{state['x'] + by}.txt").write_text("hi")
            return {"x": state["x"] + by}

        def explode(state, **_):
            raise RuntimeError("the b variant always fails")
    """))
    return tmp_path


def test_user_project_with_a_failing_variant(user_project):
    proc = run_bench(user_project, "-m", "workflow=mine", "variant=a,b", check=False)
    assert proc.returncode != 0
    assert "1 of 2 jobs failed" in proc.stderr
    # why, as `wtb compare` says it under its table (the table names job 1's variant=b)
    assert "RuntimeError: the b variant always fails — `wtb show " in proc.stderr
    assert "  job 1 case " in proc.stderr and "variant=b" in proc.stdout
    with store_of(user_project) as store:
        a, b = store.runs(store.last_sweep())
        assert a["status"] == "completed"
        assert a["metrics"] == {"one/x": 102, "two/x": 103, "x": 102.5}
        assert b["status"] == "failed"
        assert "the b variant always fails" in store.run(b["run_id"])["traceback"]
        # what the failed run wrote before failing is kept, and so are its checkpoints: here
        # the one it forked from, as step1 is a prefix it shares with variant a
        assert "one/x2.txt" in store.tree(b["commit"])
        assert b["checkpoints"] >= 1
        assert store.threads(b["run_id"])[0]["inherited"] == ["step1"]


def test_bad_target_refuses_the_run_naming_the_key_and_writes_nothing(user_project):
    proc = run_bench(user_project, "workflow=mine", "variant=typo", check=False)
    assert proc.returncode != 0
    assert ("workflow.nodes.step2._target_: cannot import 'mynodes.bmup': 'mynodes' has no "
            "attribute 'bmup'") in proc.stderr
    assert not (user_project / "data").exists()  # refused before the store was opened


def test_bad_target_in_one_job_of_a_sweep_refuses_it_naming_that_job(user_project):
    """Every job is checked at the sweep's start (docs/config.md): nothing runs."""
    proc = run_bench(user_project, "-m", "workflow=mine", "variant=a,typo", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("1 of 2 jobs [job 1 (variant=typo)]: "), proc.stderr
    assert "workflow.nodes.step2._target_: cannot import 'mynodes.bmup'" in proc.stderr
    assert not (user_project / "multirun").exists()


def test_unknown_workflow_and_variant_list_the_available_ones(user_project):
    proc = run_bench(user_project, "-m", "workflow=yours", check=False)
    assert proc.returncode != 0
    assert "Could not find 'workflow/yours'" in proc.stderr and "mine" in proc.stderr
    proc = run_bench(user_project, "workflow=mine", "variant=c", check=False)
    assert proc.returncode != 0
    assert "Could not find 'variant/c'" in proc.stderr
    assert "\ta\n\tb\n\ttypo" in proc.stderr
    assert not (user_project / "data").exists()  # nothing half-written


def test_no_workflow_chosen_says_how_to_choose(user_project):
    proc = run_bench(user_project, check=False)
    assert proc.returncode != 0
    assert "You must specify 'workflow'" in proc.stderr and "mine" in proc.stderr
