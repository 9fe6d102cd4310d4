"""How sweeps and runs start and end: every status change is one transaction with its event.

A run is `running` only while its owner process lives (wtb_conf.store.liveness); it ends as
completed, failed, cached or paused (RunStatus, wtb_conf.store.record_types). Whatever ends
it records why, with an event (run_*), the last its run records (a later `wtb evaluate`
appends `evaluated`), so that `wtb log` and `wtb fsck` can tell the story: the job itself,
the launcher (a timeout, a worker that died: `fail_run`), the sweep's end (`finish_sweep`),
or whoever finds its process gone (`reap`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, text

from wtb_conf.store.liveness import Owner, alive, ray_node, this_process
from wtb_conf.store.objects import now_iso
from wtb_conf.store.record_types import DONE, RunStatus, SweepStatus, ThreadStatus
from wtb_conf.store.records import _dumps, _event, new_id
from wtb_conf.store.schema import lock, read_conn

__all__ = ["DONE", "INTERRUPTED", "Lifecycle", "lost_error", "running_owners"]

# the statuses of runs and sweeps as bound parameters (:running, ...), one set for every query
_S = {"running": RunStatus.RUNNING, "failed": RunStatus.FAILED, "cached": RunStatus.CACHED,
      "t_running": ThreadStatus.RUNNING, "t_failed": ThreadStatus.FAILED}
INTERRUPTED = "interrupted: the job's process ended before the run finished"


def running_owners(conn: Connection) -> list[tuple[str, str, Owner]]:
    """(table, id, owner) of every run and sweep still `running`."""
    # (a hand-edited row's owner of the wrong type is no owner: it cannot be checked)
    return [(table, row_id, Owner(host if isinstance(host, str) else "",
                                  pid if isinstance(pid, int) else 0,
                                  started if isinstance(started, int) else 0))
            for table in ("runs", "sweeps")
            for row_id, host, pid, started in conn.execute(text(
                f"SELECT id, owner_host, owner_pid, owner_started FROM {table} "
                "WHERE status = :running"), {"running": RunStatus.RUNNING})]


def lost_error(owner: Owner) -> str:
    return (f"lost: its process (pid {owner.pid} on {owner.host.split('/')[0]}) ended before "
            "the run finished, with no word (killed, out of memory, os._exit)")


def _fail_running(conn: Connection, run_id: str, error: str, traceback: str | None = None,
                  kind: str = "run_failed") -> bool:
    """Mark a run that is still running failed with `error`, and its open case threads too.
    False if it had ended meanwhile (its own end wins: it knew more). The check is the
    UPDATE's own WHERE: on PostgreSQL an UPDATE that waited for another transaction's lock on
    the row re-checks it on the row as that one left it, so a run is failed at most once."""
    done = conn.execute(
        text("UPDATE runs SET status = :failed, finished_at = :at, error = :e, "
             "traceback = coalesce(:tb, traceback) WHERE id = :id AND status = :running"),
        {"at": now_iso(), "e": error, "tb": traceback, "id": run_id, **_S}).rowcount
    if not done:
        return False
    _fail_threads(conn, run_id, error)
    _event(conn, kind, {"commit": None, "error": error}, run_id=run_id)
    return True


def _start_time(conn: Connection, job_key: str | None) -> str:
    """A run's started_at, taken inside the transaction that inserts it, after every earlier
    start of the same job has committed: `running_twin` tells identical jobs apart by it
    (the earliest runs, the later ones wait for it and reuse it).

    SQLite: BEGIN IMMEDIATE holds the one write lock already: starts are serialized, and this
    process's clock orders them. PostgreSQL: transactions run side by side, and a start time
    taken before another start committed could be the older one and yet not be seen by it:
    both would run. The job key's advisory lock makes starts of one job take turns (other
    jobs never wait), and the server's clock orders them: the jobs of a sweep across
    machines whose clocks differ are still ordered by one clock."""
    if conn.dialect.name != "postgresql":
        return now_iso()
    if job_key is not None:
        lock(conn, f"job:{job_key}")
    return conn.execute(text("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', :f)"),
                        {"f": 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'}).scalar_one()  # = now_iso()


def _fail_threads(conn: Connection, run_id: str, error: str | None) -> None:
    """The case threads a failed run cut short end with it (one that failed keeps its own
    error)."""
    conn.execute(text("UPDATE threads SET status = :t_failed, error = coalesce(error, :e) "
                      "WHERE run_id = :r AND status = :t_running"),
                 {"e": error, "r": run_id, **_S})


class Lifecycle:
    """Status changes of sweeps and runs; mixed into Store."""

    engine: Engine
    add_evaluation: Callable[..., str]  # (EvaluationRecords)

    def clock_offset(self) -> float:
        """Seconds the clock of the runs' start times is ahead of this process's: the
        server's on PostgreSQL (_start_time), this process's own on SQLite."""
        if self.engine.dialect.name != "postgresql":
            return 0.0
        with read_conn(self.engine) as conn:
            server = conn.execute(text("SELECT extract(epoch FROM clock_timestamp())"))
            return float(server.scalar_one()) - time.time()

    def create_sweep(self, argv: list[str], sweep_dir: str | None = None) -> str:
        sweep_id = new_id()
        owner = this_process()
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO sweeps (id, created_at, status, sweep_dir, argv, owner_host, "
                     "owner_pid, owner_started) VALUES (:id, :at, :running, :dir, :argv, "
                     ":host, :pid, :started)"),
                {"id": sweep_id, "at": now_iso(), "dir": sweep_dir, "argv": _dumps(argv),
                 "running": SweepStatus.RUNNING, **owner._asdict()})
            _event(conn, "sweep_started", {"argv": argv, "sweep_dir": sweep_dir},
                   sweep_id=sweep_id)
        return sweep_id

    def finish_sweep(self, sweep_id: str, error: str | None = None,
                     jobs: int = 0) -> SweepStatus:
        """End the sweep: 'failed' if it ended with `error` (the launcher's, Ctrl-C) or the
        last run of any of its jobs failed (an earlier attempt that a retry made good does
        not count), else 'completed'. Runs still running lost their process with the sweep:
        each is marked failed, with an event."""
        with self.engine.begin() as conn:
            # Ends of sweeps and reaping change many rows at once: one at a time, as under
            # SQLite's write lock (PostgreSQL: two of them could lock runs rows in opposite
            # orders and deadlock, and a reaper could count a run this one is failing).
            lock(conn, "sweep ends")
            cause = f"interrupted: the sweep ended ({error})" if error else INTERRUPTED
            for (run_id,) in conn.execute(
                    text("SELECT id FROM runs WHERE sweep_id = :s AND status = :running"),
                    {"s": sweep_id, **_S}).all():
                _fail_running(conn, run_id, cause)
            failed = conn.execute(
                text("SELECT count(*) FROM runs r WHERE r.sweep_id = :s AND r.status = :failed "
                     "AND NOT EXISTS (SELECT 1 FROM runs later WHERE later.sweep_id = :s AND "
                     "later.job_num = r.job_num AND later.started_at > r.started_at)"),
                {"s": sweep_id, **_S}).scalar_one()
            status = SweepStatus.FAILED if failed or error else SweepStatus.COMPLETED
            conn.execute(
                text("UPDATE sweeps SET status = :st, finished_at = :at, error = :e "
                     "WHERE id = :s"),
                {"st": status, "at": now_iso(), "e": error, "s": sweep_id})
            # `jobs`: how many it was handed (0: not known), for `wtb rerun --failed` to count
            # the jobs that never started
            _event(conn, "sweep_finished", {"status": status, "error": error, "jobs": jobs},
                   sweep_id=sweep_id)
        return status

    def start_run(
        self,
        sweep_id: str,
        job_num: int,
        overrides: list[str],
        workflow: str | None,
        config_yaml: str,
        config_digest: str,
        job_dir: str,
        python: str | None = None,
        env_id: str | None = None,
        env_lock: list[str] | None = None,
        identity: dict[str, str] | None = None,
        parent_run: str | None = None,
        launch_dir: str | None = None,
        inputs_commit: str | None = None,
    ) -> str:
        """Record a run as running, owned by this process. `identity`: job_key, env_digest
        and code_digest; `parent_run`: the run it forked from; `inputs_commit`: its cases'
        input files."""
        run_id = new_id()
        identity = identity or {}
        with self.engine.begin() as conn:
            started = _start_time(conn, identity.get("job_key"))
            conn.execute(
                text(
                    "INSERT INTO runs (id, sweep_id, job_num, status, overrides, workflow, "
                    "config_yaml, config_digest, job_dir, started_at, python, env_id, env_lock, "
                    "job_key, env_digest, code_digest, parent_run, launch_dir, inputs_commit, "
                    "owner_host, owner_pid, owner_started, ray_node) "
                    "VALUES (:id, :sweep_id, :job_num, :running, :overrides, :workflow, "
                    ":config_yaml, :config_digest, :job_dir, :at, :python, :env_id, :env_lock, "
                    ":job_key, :env_digest, :code_digest, :parent_run, :launch_dir, :inputs, "
                    ":host, :pid, :started, :ray_node)"
                ),
                {"id": run_id, "sweep_id": sweep_id, "job_num": job_num,
                 "overrides": _dumps(overrides), "workflow": workflow,
                 "config_yaml": config_yaml, "config_digest": config_digest,
                 "job_dir": job_dir, "at": started, "python": python, "env_id": env_id,
                 "env_lock": _dumps(env_lock) if env_lock is not None else None,
                 "job_key": identity.get("job_key"), "env_digest": identity.get("env_digest"),
                 "code_digest": identity.get("code_digest"), "parent_run": parent_run,
                 "launch_dir": launch_dir, "inputs": inputs_commit,
                 **this_process()._asdict(), "ray_node": ray_node(), **_S},
            )
            _event(conn, "run_started", {"job_num": job_num, "overrides": overrides},
                   run_id=run_id, sweep_id=sweep_id)
        return run_id

    def finish_run(
        self,
        run_id: str,
        status: RunStatus | str,
        commit_id: str | None,
        metrics: dict | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        try:
            status = RunStatus(status)
        except ValueError:
            raise ValueError(f"run status {status!r} is not one of "
                             f"{tuple(s.value for s in RunStatus)}") from None
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE runs SET status = :status, finished_at = :at, commit_id = :commit, "
                    "metrics = :metrics, error = :error, traceback = :tb WHERE id = :id"
                ),
                {"status": status, "at": now_iso(), "commit": commit_id,
                 "metrics": _dumps(metrics or {}), "error": error, "tb": traceback, "id": run_id},
            )
            if status == RunStatus.FAILED:
                _fail_threads(conn, run_id, error)
            _event(conn, f"run_{status}", {"commit": commit_id, "error": error}, run_id=run_id)

    def finish_cached(self, run_id: str, source: dict[str, Any],
                      evaluation: dict[str, Any] | None = None) -> None:
        """Close a run as a cache hit of `source`: its commit and metrics, no work done.
        `evaluation` (add_evaluation's keyword arguments): the hit's scoring, recorded
        first, so that its log ends with `run_cached` as every run's ends with its run_*."""
        if evaluation is not None:
            self.add_evaluation(run_id, **evaluation)
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE runs SET status = :cached, finished_at = :at, commit_id = :c, "
                     "metrics = :m, cached_from = :src WHERE id = :id"),
                {"at": now_iso(), "c": source["commit"], "m": _dumps(source["metrics"]),
                 "src": source["run_id"], "id": run_id, **_S})
            _event(conn, "run_cached", {"from": source["run_id"], "commit": source["commit"]},
                   run_id=run_id)

    def fail_run(self, run_id: str, error: str, traceback: str | None = None) -> bool:
        """Mark a run failed from outside its process (the launcher timed it out, its worker
        died), unless it ended meanwhile; False then."""
        with self.engine.begin() as conn:
            return _fail_running(conn, run_id, error, traceback)

    # -- owners ------------------------------------------------------------------------

    def lost(self) -> dict[str, list[tuple[str, str]]]:
        """Running runs and sweeps whose owner process is gone, with the error each would
        get: {"runs": [(id, error)], "sweeps": [(id, error)]}. Reads only."""
        out: dict[str, list[tuple[str, str]]] = {"runs": [], "sweeps": []}
        with read_conn(self.engine) as conn:
            for table, row_id, owner in running_owners(conn):
                if alive(owner) is False:
                    out[table].append((row_id, lost_error(owner)))
        return out

    def reap(self) -> dict[str, list[str]]:
        """Record every run and sweep whose process died as failed, with the cause and an
        event (`run_lost`, `sweep_lost`); the ids, by table. Called by whoever looks next."""
        found = self.lost()
        if not found["runs"] and not found["sweeps"]:
            return {"runs": [], "sweeps": []}
        reaped: dict[str, list[str]] = {"runs": [], "sweeps": []}
        with self.engine.begin() as conn:
            lock(conn, "sweep ends")  # (see finish_sweep); each UPDATE re-checks 'running'
            for run_id, error in found["runs"]:
                if _fail_running(conn, run_id, error, kind="run_lost"):
                    reaped["runs"].append(run_id)
            for sweep_id, error in found["sweeps"]:
                # Its runs on this host went with it (reaped above, by owner). Those whose
                # owner cannot be checked (a Ray worker on another node) died with the
                # driver too: Ray ends a driver's actors with it, and nobody else would look.
                for run_id, host, pid, started in conn.execute(
                        text("SELECT id, owner_host, owner_pid, owner_started FROM runs "
                             "WHERE sweep_id = :s AND status = :running"),
                        {"s": sweep_id, **_S}).all():
                    if alive(Owner(host or "", pid or 0, started or 0)) is None and \
                            _fail_running(conn, run_id, f"lost with its sweep: {error}",
                                          kind="run_lost"):
                        reaped["runs"].append(run_id)
                done = conn.execute(
                    text("UPDATE sweeps SET status = :failed, finished_at = :at, error = :e "
                         "WHERE id = :s AND status = :running"),
                    {"at": now_iso(), "e": error, "s": sweep_id, **_S}).rowcount
                if done:
                    _event(conn, "sweep_lost", {"status": SweepStatus.FAILED, "error": error},
                           sweep_id=sweep_id)
                    reaped["sweeps"].append(sweep_id)
        return reaped

    def running_twin(self, run_id: str, job_key: str) -> str | None:
        """The oldest other run of the same job (`job_key`) that started before `run_id` and
        is still running with a live owner: the one this run should wait for. Read after
        this run's start committed: every start of the same job before it had committed
        too, and has an older started_at (`_start_time`: SQLite's write lock, PostgreSQL's
        lock on the job key), so exactly one of runs started at once finds none."""
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT r.id, r.owner_host, r.owner_pid, r.owner_started FROM runs r, "
                     "runs me WHERE me.id = :me AND r.job_key = :k AND r.status = :running "
                     "AND r.id != me.id AND (r.started_at < me.started_at OR "
                     "(r.started_at = me.started_at AND r.id < me.id)) ORDER BY r.started_at"),
                {"me": run_id, "k": job_key, **_S}).all()
        me = this_process()
        for row_id, host, pid, started in rows:
            owner = Owner(host or "", pid or 0, started or 0)
            # A process runs one job at a time: a run of its own left running was abandoned
            # (its job raised past every guard). A run with no owner was left by an older
            # wtb_conf. Another host's run cannot be checked: it is waited for (the job's
            # timeout bounds that).
            if host and owner != me and alive(owner) is not False:
                return row_id
        return None
