"""Run records: sweeps, runs, case threads, checkpoint links and the event log.

Rows come back as plain dicts whose keys are those of their type in
wtb_conf.store.record_types (`Run`, `Thread`, ...: the documented JSON of `wtb ... --json`,
docs/cli.md); JSON columns are decoded here so callers never see encoded text.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text

from wtb_conf.store.errors import ObjectNotFound, StoreError
from wtb_conf.store.objects import now_iso
from wtb_conf.store.record_types import (
    SETTLED,
    CheckpointLink,
    Event,
    Run,
    RunCheckpoint,
    RunDetail,
    RunStatus,
    ShareableLink,
    Sweep,
    Thread,
    ThreadStatus,
)
from wtb_conf.store.schema import read_conn


def new_id() -> str:
    """A uuid4 in hex that starts with a letter: Hydra reads `+fork.run=4604786e24` (a short
    id of digits and one e) as a number, and no prefix of an id that starts with a letter can
    be one."""
    while (hex_id := uuid.uuid4().hex)[0] not in "abcdef":
        pass
    return hex_id


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _event(conn: Connection, kind: str, data: dict, run_id=None, sweep_id=None) -> None:
    conn.execute(
        text(
            "INSERT INTO events (at, sweep_id, run_id, kind, data) "
            "VALUES (:at, :sweep_id, :run_id, :kind, :data)"
        ),
        {"at": now_iso(), "sweep_id": sweep_id, "run_id": run_id, "kind": kind,
         "data": _dumps(data)},
    )


def _run_dict(row) -> Run:
    return {
        "run_id": row.id,
        "sweep_id": row.sweep_id,
        "job_num": row.job_num,
        "status": row.status,
        "overrides": json.loads(row.overrides),
        "workflow": row.workflow,
        "config_digest": row.config_digest,
        "job_dir": row.job_dir,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "error": row.error,
        "metrics": json.loads(row.metrics) if row.metrics else {},
        "commit": row.commit_id,
        "checkpoints": row.checkpoints,
        "python": row.python,
        "env_id": row.env_id,
        "job_key": row.job_key,
        "cached_from": row.cached_from,
        "parent_run": row.parent_run,
        "launch_dir": row.launch_dir,
        "inputs_commit": row.inputs_commit,
        # where its process ran: the machine's name, and the Ray node when on Ray
        "host": (row.owner_host or "").split("/")[0] or None,
        "ray_node": row.ray_node,
    }


def _event_dict(r) -> Event:
    return {"at": r.at, "kind": r.kind, "data": json.loads(r.data)}


def _link_dict(r) -> CheckpointLink:
    return {"thread_id": r.thread_id, "checkpoint_ns": r.checkpoint_ns,
            "checkpoint_id": r.checkpoint_id, "run_id": r.run_id, "step": r.step,
            "source": r.source, "nodes": json.loads(r.nodes),
            "path": json.loads(r.path) if r.path else [], "commit": r.commit_id}


class RunRecords:
    """Writes and queries of the run tables; mixed into Store beside ObjectStore."""

    engine: Engine

    # -- writes ------------------------------------------------------------------------

    def cached_run(self, job_key: str, sweeps: list[str] | None = None) -> Run | None:
        """The newest completed run with this job key, if any (what a cache hit reuses);
        `sweeps`: only a run of one of these sweeps."""
        query = self._RUNS + "WHERE job_key = :k AND status = :completed "
        params: dict[str, Any] = {"k": job_key, "completed": RunStatus.COMPLETED}
        statement = text(query + ("AND sweep_id IN :sweeps " if sweeps is not None else "")
                         + "ORDER BY started_at DESC LIMIT 1")
        if sweeps is not None:
            if not sweeps:
                return None
            statement = statement.bindparams(bindparam("sweeps", expanding=True))
            params["sweeps"] = sweeps
        with read_conn(self.engine) as conn:
            row = conn.execute(statement, params).first()
        return _run_dict(row) if row else None

    def start_thread(self, run_id: str, thread_id: str, case_name: str,
                     fork: dict[str, Any] | None = None) -> None:
        """`fork`: the link (thread_id, checkpoint_id, path) this thread was copied from."""
        fork = fork or {}
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO threads (thread_id, run_id, case_name, status, parent_thread, "
                    "parent_checkpoint, inherited) VALUES (:t, :r, :c, :s, :pt, :pc, :i)"
                ),
                {"t": thread_id, "r": run_id, "c": case_name, "s": ThreadStatus.RUNNING,
                 "pt": fork.get("thread_id"),
                 "pc": fork.get("checkpoint_id"), "i": _dumps(fork.get("path") or [])},
            )

    def finish_thread(
        self, thread_id: str, status: ThreadStatus | str, final_state: dict | None,
        commit_id: str | None,
        error: str | None = None, traceback: str | None = None, failed_node: str | None = None,
    ) -> None:
        """`failed_node`: for a failed case, the node(s) that were running when it failed."""
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE threads SET status = :s, final_state = :fs, commit_id = :c, "
                    "error = :e, traceback = :tb, failed_node = :fn WHERE thread_id = :t"
                ),
                {"s": status, "fs": _dumps(final_state) if final_state is not None else None,
                 "c": commit_id, "e": error, "tb": traceback, "fn": failed_node,
                 "t": thread_id},
            )

    def link_checkpoint(
        self,
        run_id: str,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_id: str,
        step: int,
        source: str,
        nodes: list[str],
        commit_id: str,
        path: list[str] | None = None,
        keys: tuple[str, str] | None = None,
    ) -> None:
        """Link a LangGraph checkpoint to the commit of its case directory, and log both.

        `path`: every node run up to this checkpoint, inherited ones included; `keys`: its
        (base key, prefix key) for shared prefixes (wtb_conf.job.fork)."""
        base_key, prefix_key = keys or (None, None)
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO checkpoint_links (thread_id, checkpoint_ns, checkpoint_id, "
                    "run_id, step, source, nodes, commit_id, created_at, path, base_key, "
                    "prefix_key) VALUES (:t, :ns, :cp, :r, :step, :source, :nodes, :c, :at, "
                    ":path, :base, :prefix)"
                ),
                {"t": thread_id, "ns": checkpoint_ns, "cp": checkpoint_id, "r": run_id,
                 "step": step, "source": source, "nodes": _dumps(nodes), "c": commit_id,
                 "at": now_iso(), "path": _dumps(path or []), "base": base_key,
                 "prefix": prefix_key},
            )
            data = {"thread_id": thread_id, "checkpoint_id": checkpoint_id, "step": step,
                    "nodes": nodes}
            _event(conn, "checkpoint", data, run_id=run_id)
            _event(conn, "commit", {**data, "commit": commit_id}, run_id=run_id)

    def log_event(self, kind: str, data: dict, run_id: str | None = None,
                  sweep_id: str | None = None) -> None:
        with self.engine.begin() as conn:
            _event(conn, kind, data, run_id=run_id, sweep_id=sweep_id)

    # -- queries -----------------------------------------------------------------------

    _RUNS = (
        "SELECT runs.*, (SELECT count(*) FROM checkpoint_links l WHERE l.run_id = runs.id) "
        "AS checkpoints FROM runs "
    )

    def runs(self, sweep_id: str | None = None) -> list[Run]:
        """Runs of one sweep in job order, or all runs oldest first."""
        with read_conn(self.engine) as conn:
            if sweep_id is None:
                rows = conn.execute(text(self._RUNS + "ORDER BY started_at, job_num"))
            else:
                rows = conn.execute(
                    text(self._RUNS + "WHERE sweep_id = :s ORDER BY job_num, started_at"),
                    {"s": sweep_id},
                )
            return [_run_dict(r) for r in rows]

    def last_sweep(self) -> str:
        with read_conn(self.engine) as conn:
            row = conn.execute(
                text("SELECT id FROM sweeps ORDER BY created_at DESC LIMIT 1")
            ).first()
        if row is None:
            raise ObjectNotFound("the store holds no sweeps yet: run `python -m wtb_conf -m ...`")
        return row.id

    def unfinished_jobs(self, sweep_id: str) -> int:
        """How many of the sweep's jobs have no completed, cached or paused last run: failed,
        cut short, or never started (counted against the jobs its end recorded)."""
        with read_conn(self.engine) as conn:
            ends = conn.execute(
                text("SELECT data FROM events WHERE sweep_id = :s AND run_id IS NULL AND "
                     "kind = 'sweep_finished' ORDER BY id DESC LIMIT 1"), {"s": sweep_id}).all()
        last = {r["job_num"]: r for r in self.runs(sweep_id)}
        jobs = max([len(last)] + [json.loads(e.data).get("jobs") or 0 for e in ends])
        return jobs - sum(r["status"] in SETTLED for r in last.values())

    def ended_early(self, argv: list[str], before: str) -> list[str]:
        """The sweeps of this command line that ended early (Ctrl-C, a crash, a launcher
        error) one after another up to sweep `before`, newest first: what it finishes."""
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT id, error FROM sweeps WHERE argv = :argv AND created_at <= "
                     "(SELECT created_at FROM sweeps WHERE id = :before) AND id != :before "
                     "ORDER BY created_at DESC"), {"argv": _dumps(argv), "before": before}).all()
        chain = []
        for row in rows:
            if row.error is None:  # it ran to its end: what is left is no longer its own
                break
            chain.append(row.id)
        return chain

    def sweep(self, sweep_id: str) -> Sweep:
        with read_conn(self.engine) as conn:
            row = conn.execute(text("SELECT * FROM sweeps WHERE id = :id"),
                               {"id": sweep_id}).first()
        if row is None:
            raise ObjectNotFound(f"sweep {sweep_id} is not in the store")
        return {"sweep_id": row.id, "status": row.status, "created_at": row.created_at,
                "finished_at": row.finished_at, "sweep_dir": row.sweep_dir,
                "argv": json.loads(row.argv)}

    def resolve(self, table: str, ref: str) -> str:
        """A full id from an id or a unique prefix of one (like git's short hashes); `last`
        is the newest run or sweep."""
        if table not in ("runs", "sweeps", "commits"):
            raise ValueError(table)
        if ref == "last" and table == "sweeps":
            return self.last_sweep()
        if ref == "last" and table == "runs":
            with read_conn(self.engine) as conn:
                row = conn.execute(text("SELECT id FROM runs ORDER BY started_at DESC, "
                                        "job_num DESC LIMIT 1")).first()
            if row is None:
                raise ObjectNotFound("the store holds no runs yet: run `python -m wtb_conf -m "
                                     "...`")
            return row.id
        if not ref or not all(c in "0123456789abcdef" for c in ref.lower()):
            raise ObjectNotFound(f"{ref!r} is not an id: ids are hexadecimal")
        # LIKE is case-sensitive on PostgreSQL and not on SQLite: ids are written lowercase
        # hex, and the prefix is lowered, so both match the same rows (no '%' or '_' in it).
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text(f"SELECT id FROM {table} WHERE id LIKE :p LIMIT 2"),
                {"p": ref.lower() + "%"},
            ).all()
        kind = table[:-1]
        if not rows:
            raise ObjectNotFound(f"no {kind} matches {ref!r}")
        if len(rows) > 1:
            raise ObjectNotFound(f"{ref!r} matches several {table}: give more characters")
        return rows[0].id

    def run_or_sweep(self, ref: str) -> tuple[str, str]:
        """("run", id) or ("sweep", id) for an id or prefix that names one of them; `last` is
        the last sweep."""
        if ref == "last":
            return "sweep", self.last_sweep()
        found = []
        for kind in ("runs", "sweeps"):
            try:
                found.append((kind[:-1], self.resolve(kind, ref)))
            except StoreError as e:
                error = e
        if len(found) == 1:
            return found[0]
        if found:
            raise StoreError(f"{ref!r} names both a run and a sweep: give more characters")
        raise StoreError(f"{ref!r} is neither a run nor a sweep ({error})")

    def run(self, run_id: str) -> RunDetail:
        with read_conn(self.engine) as conn:
            row = conn.execute(text(self._RUNS + "WHERE id = :id"), {"id": run_id}).first()
            if row is None:
                raise ObjectNotFound(f"run {run_id} is not in the store")
            return RunDetail(**_run_dict(row), traceback=row.traceback,
                             config_yaml=row.config_yaml,
                             env_lock=json.loads(row.env_lock) if row.env_lock else [])

    def run_of_thread(self, thread_id: str) -> str | None:
        """The run a case thread belongs to; None if the store holds no such thread."""
        with read_conn(self.engine) as conn:
            return conn.execute(text("SELECT run_id FROM threads WHERE thread_id = :t"),
                                {"t": thread_id}).scalar()

    def threads(self, run_id: str) -> list[Thread]:
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT * FROM threads WHERE run_id = :r ORDER BY case_name"), {"r": run_id}
            )
            return [
                {"thread_id": r.thread_id, "case": r.case_name, "status": r.status,
                 "final_state": json.loads(r.final_state) if r.final_state else None,
                 "commit": r.commit_id, "parent_thread": r.parent_thread,
                 "parent_checkpoint": r.parent_checkpoint,
                 "inherited": json.loads(r.inherited) if r.inherited else [],
                 "error": r.error, "traceback": r.traceback, "failed_node": r.failed_node}
                for r in rows
            ]

    def checkpoints(self, run_id: str) -> list[RunCheckpoint]:
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text(
                    "SELECT l.*, t.case_name FROM checkpoint_links l JOIN threads t "
                    "ON t.thread_id = l.thread_id WHERE l.run_id = :r "
                    "ORDER BY t.case_name, l.step"
                ),
                {"r": run_id},
            )
            return [RunCheckpoint(**_link_dict(r), case=r.case_name) for r in rows]

    def checkpoint(self, run_id: str, ref: str) -> RunCheckpoint:
        """The one checkpoint of the run whose id starts with `ref` (`--checkpoint`)."""
        matches = [c for c in self.checkpoints(run_id) if c["checkpoint_id"].startswith(ref)]
        if len(matches) != 1:
            raise ObjectNotFound(
                f"--checkpoint: {len(matches) or 'no'} checkpoints of run {run_id[:8]} match "
                f"{ref!r}; list them with `wtb show {run_id[:8]}`")
        return matches[0]

    def shareable(self, base_key: str) -> list[ShareableLink]:
        """Links with this base key, deepest first: checkpoints a job may fork from."""
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT * FROM checkpoint_links WHERE base_key = :b "
                     "ORDER BY step DESC, created_at"), {"b": base_key})
            return [ShareableLink(**_link_dict(r), prefix_key=r.prefix_key) for r in rows]

    def events(self, run_id: str) -> list[Event]:
        with read_conn(self.engine) as conn:
            rows = conn.execute(
                text("SELECT at, kind, data FROM events WHERE run_id = :r ORDER BY id"),
                {"r": run_id})
            return [_event_dict(r) for r in rows]

    def first_sweep_event(self, sweep_id: str, kind: str) -> Event | None:
        """The sweep's own first event of this kind (not one of its runs'); None: it has
        none."""
        with read_conn(self.engine) as conn:
            row = conn.execute(
                text("SELECT at, kind, data FROM events WHERE sweep_id = :s AND run_id IS NULL "
                     "AND kind = :k ORDER BY id LIMIT 1"), {"s": sweep_id, "k": kind}).first()
        return _event_dict(row) if row else None
