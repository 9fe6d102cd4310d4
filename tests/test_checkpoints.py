"""LangGraph's checkpointer as `storage.checkpoints` chooses it (wtb_conf.job.checkpointer):
a SQLite
file or a PostgreSQL database, the same graph on both; LangGraph's tables made once however
many jobs start at once; and what `wtb fsck` asks of it, read-only."""

from __future__ import annotations

import multiprocessing
import sqlite3

import psycopg
import pytest
from conftest import copy_project, run_bench
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from wtb_conf.job.checkpointer import CheckpointsError, describe, missing, open_checkpointer
from wtb_conf.storage import is_postgres, libpq_url, sqlalchemy_url


class State(TypedDict):
    x: int


def graph():
    g = StateGraph(State)
    g.add_node("add", lambda s: {"x": s["x"] + 1})
    g.add_edge(START, "add")
    g.add_edge("add", END)
    return g


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path) -> str:
    """storage.checkpoints, once a SQLite file and once a PostgreSQL database of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "data" / "checkpoints.db")
    server = request.getfixturevalue("pg_server")
    return server.url(server.new_database(), driver="postgresql")


def keys_of(where: str, thread: str) -> list[tuple[str, str, str]]:
    with open_checkpointer(where) as saver:
        return [(thread, "", t.config["configurable"]["checkpoint_id"])
                for t in saver.list({"configurable": {"thread_id": thread}})]


def test_a_graph_runs_and_its_checkpoints_are_found(where):
    with open_checkpointer(where) as saver:
        app = graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "run/one"}}
        assert app.invoke({"x": 1}, config) == {"x": 2}
    with open_checkpointer(where) as saver:  # a second job: the tables are there already
        assert saver.get_tuple(config).checkpoint["channel_values"]["x"] == 2
    keys = keys_of(where, "run/one")
    assert len(keys) == 3  # input, START's step, add's step
    ghost = ("run/one", "", "1f0-not-there")
    assert missing(where, [*keys, ghost]) == {ghost}
    assert missing(where, []) == set()


def _open(url: str, queue) -> None:
    try:
        with open_checkpointer(url):
            queue.put("ok")
    except Exception as e:
        queue.put(f"{type(e).__name__}: {e}")


def test_many_jobs_starting_at_once_set_up_the_tables_once(pg_server):
    """LangGraph's setup() alone fails here (two processes apply the same migration), and
    with a blocking advisory lock PostgreSQL reports a deadlock (CREATE INDEX CONCURRENTLY
    waits for the waiters): each of 8 processes must open it."""
    for _ in range(8):  # bare setup() fails ~1 round in 3: 8 rounds miss that ~1%
        url = pg_server.url(pg_server.new_database(), driver="postgresql")
        ctx = multiprocessing.get_context("fork")  # as the launcher's local workers start
        queue = ctx.Queue()
        procs = [ctx.Process(target=_open, args=(url, queue)) for _ in range(8)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert results == ["ok"] * 8
        with psycopg.connect(url) as conn:
            versions = [r[0] for r in conn.execute("SELECT v FROM checkpoint_migrations")]
        assert sorted(versions) == list(range(len(versions))) and len(versions) > 5


def test_fsck_reads_postgresql_read_only_and_says_what_is_wrong(pg_server):
    url = pg_server.url(pg_server.new_database(), driver="postgresql")
    key = ("t", "", "c")
    with pytest.raises(CheckpointsError, match="holds no LangGraph checkpoints"):
        missing(url, [key])
    with psycopg.connect(url) as conn:  # it made nothing
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'checkpoint%'"
                            ).fetchone() == (0,)
    bad = pg_server.url("no_such_db", driver="postgresql")
    with pytest.raises(CheckpointsError, match="cannot connect to the checkpointer .*no_such_db"):
        missing(bad, [key])
    with pytest.raises(CheckpointsError, match="^storage.checkpoints: cannot connect"):
        with open_checkpointer(bad):
            pass


def test_fsck_reads_sqlite_read_only(tmp_path):
    path = tmp_path / "checkpoints.db"
    with pytest.raises(CheckpointsError, match="does not exist"):
        missing(path, [("t", "", "c")])
    assert not path.exists()
    sqlite3.connect(path).close()
    with pytest.raises(CheckpointsError, match="is not a LangGraph checkpoints file"):
        missing(path, [("t", "", "c")])


def test_urls():
    assert is_postgres("postgresql://u@h/db") and is_postgres("postgres://u@h/db")
    assert is_postgres("postgresql+psycopg://u@h/db") and is_postgres("POSTGRESQL://h/db")
    assert not is_postgres("data/checkpoints.db") and not is_postgres("mysql://h/db")
    assert libpq_url("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    assert sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db" and sqlalchemy_url("x.db") == "x.db"
    assert describe("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"


@pytest.mark.parametrize("multirun", [True, False], ids=["sweep", "single-run"])
def test_an_unreachable_checkpointer_refuses_the_sweep_before_a_store_is_made(tmp_path, multirun):
    """Checked before the store is opened: a new project keeps no data/ (no store made, none
    migrated), and no job waits for the server."""
    project = copy_project(tmp_path)
    proc = run_bench(project, *(["-m"] if multirun else []), "workflow=file_processing",
                     "storage.checkpoints=postgresql://nobody@127.0.0.1:1/wtb", check=False)
    assert proc.returncode == 1
    assert ("storage.checkpoints: cannot connect to the checkpointer "
            "postgresql://nobody@127.0.0.1:1/wtb") in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (project / "data").exists() and not (project / "multirun").exists()

