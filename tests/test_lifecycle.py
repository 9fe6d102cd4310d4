"""Owners and statuses: which processes count as gone, what `reap` records, which run a job
waits for, and the events every status change leaves (wtb_conf.store.lifecycle, liveness)."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from sqlalchemy import text

from wtb_conf.store import open_store
from wtb_conf.store.liveness import Owner, alive, host, this_process


def _zombie() -> Owner:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # not waited for: it stays a zombie until the end
        with open(f"/proc/{child.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return Owner(host(), child.pid, int(fields[19]))
        time.sleep(0.01)
    raise AssertionError("the child never ended")


def _other(part: int, value: str) -> Owner:
    me = this_process()
    parts = me.host.split("/")
    parts[part] = value
    return me._replace(host="/".join(parts))


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (lambda: this_process(), True),
        (lambda: this_process()._replace(pid=2**22 + 7), False),  # no such pid
        (lambda: this_process()._replace(started=1), False),  # the pid was reused
        (_zombie, False),  # ended, not yet reaped by its parent
        (lambda: _other(1, "deadbeef"), False),  # an earlier boot: every process of it ended
        (lambda: _other(0, "elsewhere"), None),  # another machine
        (lambda: _other(2, "1"), None),  # another container of this machine
        (lambda: this_process()._replace(started=0), None),  # no start time (no /proc)
        (lambda: Owner("", 0, 0), None),  # recorded by a wtb_conf without owners
    ],
    ids=["this", "gone", "reused", "zombie", "rebooted", "other-host", "other-ns",
         "no-start", "no-owner"],
)
def test_alive(owner, expected):
    assert alive(owner()) is expected


@pytest.fixture
def store(db_url, tmp_path):
    """On SQLite and on PostgreSQL (conftest's db_url)."""
    with open_store(db_url, tmp_path / "blobs") as s:
        yield s


def _run(store, sweep, key="k", owner: Owner | None = None) -> str:
    run_id = store.start_run(sweep, 0, [], "wf", "{}", "d", "/tmp/job", identity={"job_key": key})
    if owner is not None:
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE runs SET owner_host = :h, owner_pid = :p, "
                              "owner_started = :s WHERE id = :id"),
                         {"h": owner.host, "p": owner.pid, "s": owner.started, "id": run_id})
    return run_id


def _kinds(store, run_id):
    return [e["kind"] for e in store.events(run_id)]


def test_reap_fails_what_dead_processes_left_running_with_an_event(store):
    sweep = store.create_sweep([])
    dead = _run(store, sweep, owner=this_process()._replace(pid=2**22 + 7))
    live = _run(store, sweep)
    assert store.reap() == {"runs": [dead], "sweeps": []}
    run = store.run(dead)
    assert run["status"] == "failed" and run["error"].startswith("lost: its process")
    assert _kinds(store, dead)[-1] == "run_lost"
    assert store.run(live)["status"] == "running"
    assert store.reap() == {"runs": [], "sweeps": []}  # once


def test_a_lost_sweep_takes_its_runs_that_cannot_be_checked(store):
    sweep = store.create_sweep([])
    with store.engine.begin() as conn:  # its driver died
        conn.execute(text("UPDATE sweeps SET owner_pid = :p WHERE id = :s"),
                     {"p": 2**22 + 7, "s": sweep})
    remote = _run(store, sweep, owner=_other(0, "node-2"))
    elsewhere = _run(store, store.create_sweep([]), owner=_other(0, "node-2"))
    reaped = store.reap()
    assert reaped == {"runs": [remote], "sweeps": [sweep]}
    assert store.run(remote)["error"].startswith("lost with its sweep: lost:")
    assert store.run(elsewhere)["status"] == "running"  # its sweep still runs


@pytest.mark.parametrize(
    ("twin_owner", "waits"),
    [
        (lambda: _other(0, "node-2"), True),  # cannot be checked: waited for
        (lambda: this_process()._replace(pid=2**22 + 7), False),  # its process is gone
        (lambda: this_process(), False),  # this process's own: abandoned, one job at a time
        (lambda: Owner("", 0, 0), False),  # left by a wtb_conf without owners
    ],
    ids=["remote", "dead", "own", "no-owner"],
)
def test_which_running_twin_a_job_waits_for(store, twin_owner, waits):
    sweep = store.create_sweep([])
    twin = _run(store, sweep, owner=twin_owner())
    me = _run(store, sweep)
    assert store.running_twin(me, "k") == (twin if waits else None)
    assert store.running_twin(twin, "k") is None  # only the one that started first is waited for


def test_start_times_have_one_format_on_either_database(store):
    """On PostgreSQL a run's start time is the server's clock (identical jobs on several
    machines are ordered by one clock): it must read like every other time the store writes,
    or `ORDER BY started_at` would mix two formats."""
    sweep = store.create_sweep([])
    runs = [_run(store, sweep), _run(store, sweep, key=None)]
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
    started = [store.run(r)["started_at"] for r in runs]
    assert all(stamp.fullmatch(s) for s in [*started, store.sweep(sweep)["created_at"]])
    assert started == sorted(started) and started[0] >= store.sweep(sweep)["created_at"][:19]


def test_a_start_of_the_same_job_waits_for_one_in_flight(store, monkeypatch):
    """Two starts of one job, the first held inside its transaction once it has its start
    time. The second must wait for it, then find it as the twin to wait for. Were it not to
    wait (PostgreSQL without the job key's lock), it would commit first and find no twin,
    and the first, committed later, would find the second younger: both would run. A start
    of another job does not wait on PostgreSQL (SQLite has one write lock for all)."""
    import threading

    from wtb_conf.store import lifecycle

    original = lifecycle._start_time
    inside, release = threading.Event(), threading.Event()

    def held(conn, job_key):
        at = original(conn, job_key)
        if threading.current_thread().name == "first":
            inside.set()
            assert release.wait(30)
        return at

    monkeypatch.setattr(lifecycle, "_start_time", held)
    sweep = store.create_sweep([])
    runs: dict[str, str] = {}

    def start(name: str, key: str = "k") -> threading.Thread:
        remote = _other(0, "node-2")  # (this process's own running run would be abandoned)
        thread = threading.Thread(
            target=lambda: runs.__setitem__(name, _run(store, sweep, key, owner=remote)),
            name=name)
        thread.start()
        return thread

    first = start("first")
    assert inside.wait(30)
    second = start("second")
    if store.engine.dialect.name == "postgresql":
        start("other job", key="other").join(10)
        assert "other job" in runs, "a start of another job waited"
    second.join(1.0)
    assert second.is_alive(), "the second start did not wait for the first"
    release.set()
    first.join(30)
    second.join(30)
    assert store.running_twin(runs["second"], "k") == runs["first"]
    assert store.running_twin(runs["first"], "k") is None


def test_finish_sweep_fails_its_running_runs_with_events_and_counts_last_attempts(store):
    sweep = store.create_sweep([])
    retried = _run(store, sweep)
    store.fail_run(retried, "WorkerDied: its actor died; retried")
    store.finish_run(_run(store, sweep), "completed", None)  # the retry, same job_num 0
    assert store.finish_sweep(sweep) == "completed"
    other = store.create_sweep([])
    cut = _run(store, other)
    assert store.finish_sweep(other, "KeyboardInterrupt") == "failed"
    assert store.run(cut)["error"] == "interrupted: the sweep ended (KeyboardInterrupt)"
    assert _kinds(store, cut) == ["run_started", "run_failed"]
    assert store.sweep(other)["status"] == "failed"


def test_fail_run_never_overrides_an_end_the_run_recorded_itself(store):
    run_id = _run(store, store.create_sweep([]))
    store.finish_run(run_id, "completed", None)
    assert store.fail_run(run_id, "TimeoutError: too late") is False
    assert store.run(run_id)["status"] == "completed"


def test_migration_8_gives_runs_an_older_sweep_end_failed_their_missing_event(db_url, tmp_path):
    db, blobs = db_url, tmp_path / "blobs"
    with open_store(db, blobs) as store:
        run_id = _run(store, store.create_sweep([]))
        with store.engine.begin() as conn:  # what finish_sweep did before migration 7
            conn.execute(text("UPDATE runs SET status = 'failed' WHERE id = :id"),
                         {"id": run_id})
            conn.execute(text("DELETE FROM wtb_migrations WHERE v = 8"))
    with open_store(db, blobs) as store:
        assert _kinds(store, run_id) == ["run_started", "run_failed"]


# -- every way a run ends: its last event is its run_* event -------------------------------

EVALUATION = {"source": "run", "eval_key": "k", "compare": {}, "cases": {},
              "summary": {"scores": {}}}


def _completed(store, sweep):  # as wtb_conf.job.task does: scored, then closed
    run_id = _run(store, sweep)
    store.add_evaluation(run_id, **EVALUATION)
    store.finish_run(run_id, "completed", None, {"m": 1})
    return run_id, "completed", "run_completed"


def _node_failed(store, sweep):
    run_id = _run(store, sweep)
    store.add_evaluation(run_id, **EVALUATION)
    store.finish_run(run_id, "failed", None, {}, "ValueError: five", "tb")
    return run_id, "failed", "run_failed"


def _paused(store, sweep):
    run_id = _run(store, sweep)
    store.finish_run(run_id, "paused", None)
    return run_id, "paused", "run_paused"


def _cached(store, sweep):  # the hit's scoring used to come after run_cached
    earlier, _, _ = _completed(store, sweep)
    run_id = _run(store, sweep)
    store.finish_cached(run_id, {"run_id": earlier, "commit": None, "metrics": {"m": 1}},
                        {**EVALUATION, "source": "cache"})
    assert store.evaluations(run_id)[0]["source"] == "cache"
    return run_id, "cached", "run_cached"


def _unopened(store, sweep):  # intake.record_unopened: a job that could not even be opened
    run_id = store.start_run(sweep, 0, [], None, "{}", "", "/tmp/job")
    store.finish_run(run_id, "failed", None, {}, "ValueError: bad config")
    return run_id, "failed", "run_failed"


def _timed_out(store, sweep):  # the launcher's word (Plan.on_failure -> fail_run)
    run_id = _run(store, sweep)
    store.log_event("node", {"node": "work"}, run_id)
    assert store.fail_run(run_id, "TimeoutError: job #0 ran over hydra.launcher.timeout_s=3")
    return run_id, "failed", "run_failed"


def _interrupted(store, sweep):
    run_id = _run(store, sweep)
    store.finish_sweep(sweep, "KeyboardInterrupt")
    return run_id, "failed", "run_failed"


def _lost(store, sweep):
    run_id = _run(store, sweep, owner=this_process()._replace(pid=2**22 + 7))
    store.reap()
    return run_id, "failed", "run_lost"


@pytest.mark.parametrize("end", [_completed, _node_failed, _paused, _cached, _unopened,
                                 _timed_out, _interrupted, _lost],
                         ids=lambda f: f.__name__.strip("_"))
def test_every_way_a_run_ends_leaves_its_run_event_last(store, end):
    run_id, status, kind = end(store, store.create_sweep([]))
    kinds = _kinds(store, run_id)
    assert store.run(run_id)["status"] == status
    assert kinds[0] == "run_started" and kinds[-1] == kind, kinds
    assert [k for k in kinds if k.startswith("run_")] == ["run_started", kind]
    # a later re-scoring (`wtb evaluate`) is appended after it, as docs/store.md says
    store.add_evaluation(run_id, **{**EVALUATION, "source": "evaluate"})
    assert _kinds(store, run_id)[-2:] == [kind, "evaluated"]
