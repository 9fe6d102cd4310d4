"""`fork.after=NODE` on runs that inherited NODE instead of running it: a prefix-sharing run,
a cache hit, a resumed run and a replay of one. The fork starts from the checkpoint of the
step that ran NODE, in whichever run of the case's lineage that was, as `python -m wtb_conf`
and `wtb` do it in a project directory (basic launcher: in-process, one job after another).
Like test_timetravel, every test runs on SQLite and on PostgreSQL (store and checkpointer)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import run_bench
from test_timetravel import DB, case, new_project, new_run, show, wtb

DEMO = ("-m", "workflow=file_processing")
BASIC = "hydra/launcher=basic"
DROP = ("variant=drop_invalid", "workflow.routes.validate.router.max_invalid=0.1")
DROP_05 = ("variant=drop_invalid", "workflow.routes.validate.router.max_invalid=0.5")
FILL_05 = ("variant=fill_defaults", "workflow.routes.validate.router.max_invalid=0.5")
CASES = ("orders", "returns")


def at_node(run: dict, name: str, node: str) -> dict:
    """The checkpoint of `run`'s case whose step ran `node` itself."""
    return next(cp for cp in case(run, name)["checkpoints"] if node in cp["nodes"])


def fork(project: Path, *overrides: str) -> dict:
    run_bench(project, *DEMO, *overrides, BASIC)
    return show(project, "last")


def events(project: Path, run: dict) -> list[dict]:
    return json.loads(wtb(project, "log", run["run_id"], "--json").stdout)


def check_case(new: dict, log: list[dict], name: str, origin: dict, at: dict,
               executed: list[str]) -> None:
    """`new`'s case `name` was copied from checkpoint `at` of `origin`'s case thread, and ran
    exactly `executed` itself: by its checkpoint links and by its `node` events (`log`)."""
    c, source = case(new, name), case(origin, name)
    assert (c["parent_thread"], c["parent_checkpoint"]) == (source["thread_id"],
                                                           at["checkpoint_id"])
    assert c["inherited"] == at["path"]
    first = c["checkpoints"][0]
    assert (first["source"], first["checkpoint_id"], first["commit"]) == (
        "fork", at["checkpoint_id"], at["commit"])
    assert c["executed"] == executed
    mine = [e for e in log if e["data"].get("thread_id") == c["thread_id"]]
    assert [e["data"]["node"] for e in mine if e["kind"] == "node"] == executed
    assert [(e["data"]["from_thread"], e["data"]["checkpoint_id"]) for e in mine
            if e["kind"] == "fork"] == [(source["thread_id"], at["checkpoint_id"])]


def execute(project: Path, sql: str, *params: str) -> None:
    """One statement (`?` placeholders) on the project's store, SQLite or PostgreSQL."""
    if project not in DB:
        with sqlite3.connect(project / "data/wtb.db") as db:
            db.execute(sql, params)
        return
    libpq = DB[project].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq, autocommit=True) as db:
        db.execute(sql.replace("?", "%s"), params)


def copy_with_store(project: Path, dest: Path, request) -> Path:
    """The project directory copied; on PostgreSQL with a copy of its database too."""
    shutil.copytree(project, dest)
    if project in DB:
        server = request.getfixturevalue("pg_server")
        name, source = f"t_{uuid.uuid4().hex[:12]}", DB[project].rsplit("/", 1)[1]
        with psycopg.connect(server.url(driver="postgresql"), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')  # names: not parameters
        config = dest / "conf/storage/default.yaml"
        storage = yaml.safe_load(config.read_text())
        storage |= {"db_url": server.url(name), "checkpoints": server.url(name, "postgresql")}
        config.write_text(yaml.safe_dump(storage))
        DB[dest] = storage["db_url"]
    return dest


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def project(tmp_path_factory, request) -> Path:
    return new_project(tmp_path_factory.mktemp(f"fork_lineage-{request.param}"),
                       request.param, request)


@pytest.fixture(scope="module")
def grid(project) -> dict[str, dict]:
    """2 variants x 2 thresholds. drop@0.1 runs every node; drop@0.5 shares `load, clean`
    with it; fill@0.1 shares `load` with drop@0.1; fill@0.5 shares `load, clean` with
    fill@0.1, which inherited `load`: two hops. Then a cache hit of drop@0.5."""
    run_bench(project, *DEMO, "variant=drop_invalid,fill_defaults",
              "workflow.routes.validate.router.max_invalid=0.1,0.5", BASIC)
    jobs = json.loads(wtb(project, "runs", "--sweep", "last", "--json").stdout)
    runs = dict(zip(("drop", "drop_05", "fill", "fill_05"),
                    (show(project, r["run_id"]) for r in jobs), strict=True))
    for name in CASES:
        assert case(runs["drop"], name)["inherited"] == []
        assert case(runs["drop_05"], name)["inherited"] == ["load", "clean"]
        assert case(runs["fill"], name)["inherited"] == ["load"]
        assert case(runs["fill"], name)["parent_thread"] == case(runs["drop"], name)["thread_id"]
        assert case(runs["fill_05"], name)["inherited"] == ["load", "clean"]
        assert (case(runs["fill_05"], name)["parent_thread"]
                == case(runs["fill"], name)["thread_id"])
    runs["cached"] = fork(project, *DROP_05)
    assert runs["cached"]["status"] == "cached"
    assert runs["cached"]["cached_from"] == runs["drop_05"]["run_id"]
    return runs


@pytest.fixture(scope="module")
def resumed(project) -> dict[str, dict]:
    """The issue's steps: drop@0.1 paused before `summarize`, `wtb resume --set`, then
    `wtb rerun` of the resumed run, which forks from the paused run again."""
    paused = fork(project, *DROP, "+workflow.interrupt_before=[summarize]")
    assert paused["status"] == "paused"
    proc = wtb(project, "resume", paused["run_id"][:8], "--set", "quarantined=99", BASIC)
    resume = show(project, new_run(proc))
    replay = show(project, new_run(wtb(project, "rerun", resume["run_id"][:8], BASIC)))
    for run in (resume, replay):
        assert run["status"] == "completed"
        for name in CASES:
            c = case(run, name)
            assert c["inherited"] == ["load", "clean", "validate", "quarantine"]
            assert c["executed"] == ["summarize"]
            assert c["parent_thread"] == case(paused, name)["thread_id"]
    return {"paused": paused, "resume": resume, "replay": replay}


@pytest.mark.slow
def test_after_a_node_the_run_ran_itself(project, grid):
    drop = grid["drop"]
    new = fork(project, *DROP, f"+fork.run={drop['run_id'][:10]}", "+fork.after=clean")
    log = events(project, new)
    for name in CASES:
        check_case(new, log, name, drop, at_node(drop, name, "clean"),
                   ["validate", "quarantine", "summarize"])
    assert new["commit"] == drop["commit"]


@pytest.mark.slow
def test_after_a_node_a_shared_prefix_inherited_two_hops_up(project, grid):
    """fill@0.5 inherited `load` from fill@0.1, which inherited it from drop@0.1."""
    fill_05, drop = grid["fill_05"], grid["drop"]
    new = fork(project, *FILL_05, f"+fork.run={fill_05['run_id']}", "+fork.after=load")
    log = events(project, new)
    assert new["parent_run"] == fill_05["run_id"]  # the run named; the cases say where from
    for name in CASES:
        check_case(new, log, name, drop, at_node(drop, name, "load"),
                   ["clean", "validate", "summarize"])
    assert new["commit"] == fill_05["commit"]


@pytest.mark.slow
def test_after_a_node_of_a_cache_hit(project, grid):
    """The cache hit ran nothing; the run it reused (drop@0.5) inherited `load`."""
    cached, drop = grid["cached"], grid["drop"]
    new = fork(project, *DROP_05, f"+fork.run={cached['run_id']}", "+fork.after=load")
    log = events(project, new)
    for name in CASES:
        check_case(new, log, name, drop, at_node(drop, name, "load"),
                   ["clean", "validate", "summarize"])
    assert new["commit"] == grid["drop_05"]["commit"]


@pytest.mark.slow
def test_after_a_node_of_a_resumed_run(project, grid, resumed):
    paused = resumed["paused"]
    new = fork(project, *DROP, f"+fork.run={resumed['resume']['run_id']}",
               "+fork.after=validate")
    log = events(project, new)
    for name in CASES:
        check_case(new, log, name, paused, at_node(paused, name, "validate"),
                   ["quarantine", "summarize"])
        # the resume's --set came after `validate`: not part of the state it left
        assert case(new, name)["final_state"]["quarantined"] != 99
    assert new["commit"] == grid["drop"]["commit"]  # drop@0.1 from start to end


@pytest.mark.slow
def test_after_a_node_of_a_replayed_resume(project, grid, resumed):
    """The issue: this fork executed only `summarize` and inherited `validate`."""
    paused = resumed["paused"]
    new = fork(project, *DROP, f"+fork.run={resumed['replay']['run_id']}", "+fork.after=clean")
    log = events(project, new)
    for name in CASES:
        check_case(new, log, name, paused, at_node(paused, name, "clean"),
                   ["validate", "quarantine", "summarize"])
    assert new["commit"] == grid["drop"]["commit"]


@pytest.mark.parametrize(("kind", "config", "executed"), [
    ("fill_05", FILL_05, ["validate", "summarize"]),
    ("cached", DROP_05, ["validate", "summarize"]),
    ("resume", DROP, ["summarize"]),
    ("replay", DROP, ["summarize"]),
])
@pytest.mark.slow
def test_fork_checkpoint_of_runs_that_inherited(project, grid, resumed, kind, config,
                                                executed):
    """`fork.checkpoint` is the named run's own checkpoint, here the copied one it started
    from (a cache hit's are those of the run it reused); the new case continues from it."""
    named = {**grid, **resumed}[kind]
    holder = grid["drop_05"] if kind == "cached" else named
    at = case(holder, "orders")["checkpoints"][0]
    assert at["source"] == "fork"
    new = fork(project, *config, f"+fork.run={named['run_id']}",
               f"+fork.checkpoint={at['checkpoint_id']}")
    log = events(project, new)
    assert [c["case"] for c in new["cases"]] == ["orders"]
    check_case(new, log, "orders", holder, at, executed)


@pytest.mark.slow
def test_refused_when_the_store_lost_the_ancestors_checkpoint(project, resumed, tmp_path,
                                                              request):
    """In a copy of the store without the paused run's checkpoint links of `orders` (and
    then without its thread), the replay's `clean` cannot be traced: the error names where
    it came from instead of forking from a later checkpoint."""
    copy = copy_with_store(project, tmp_path / "copy", request)
    replay, paused = resumed["replay"]["run_id"], resumed["paused"]["run_id"]
    thread = case(resumed["paused"], "orders")["thread_id"]
    # rerun=true: the same fork already ran in this store; not its cache hit
    args = (*DEMO, *DROP, f"+fork.run={replay}", "+fork.after=clean", "rerun=true", BASIC)
    execute(copy, "DELETE FROM checkpoint_links WHERE thread_id = ?", thread)
    proc = run_bench(copy, *args, check=False)
    assert proc.returncode == 1
    assert (f"fork.after: case 'orders' of run {replay[:8]} inherited node 'clean' from run "
            f"{paused[:8]}, and the store holds no checkpoint of that run's case right after "
            f"'clean'") in proc.stderr
    execute(copy, "DELETE FROM threads WHERE thread_id = ?", thread)
    proc = run_bench(copy, *args, check=False)
    assert proc.returncode == 1
    assert (f"fork.after: case 'orders' of run {replay[:8]} inherited node 'clean' from "
            f"thread {thread}, which this store does not hold") in proc.stderr
    failed = show(copy, "last")
    assert failed["status"] == "failed" and failed["cases"] == []
