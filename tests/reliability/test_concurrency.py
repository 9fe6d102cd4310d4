"""8 processes x 250 commits into one store at once, on SQLite and on PostgreSQL: no errors,
every commit readable. (benchmarks/concurrency_bench.py runs the same workload at 500 commits
and 1-8 processes, for the figures.)

Each process is a real interpreter (this file run as a script). All of them open the same
fresh store at the same moment (so the schema set-up races too), then commit their own
directory 250 times, each commit's parent the one before, the way a job commits a case dir
after every checkpoint and links the checkpoint to it (a sweep, a run and a thread per
process). Every commit changes files: small ones (rows in the database), some over 64 KiB
(blob files), and some whose bytes every process writes at about the same time (the same blob
added by several processes at once). The first commit is the same in every process: the same
commit inserted eight times at once.

The parent then checks every returned commit: it exists, its parent is the one before, its
tree holds exactly the files the process wrote, and every blob re-hashes. Commit latency
(p50/p99/max) is printed, not asserted: `pytest -s tests/reliability/test_concurrency.py`.
benchmarks/concurrency_bench.py runs the same workload with 1, 2, 4 and 8 processes.

Also here: 8 identical jobs recorded at the same moment (one runs, the others wait for it and
reuse it), on both databases; and, SQLite only, stores opened while another process turns the
new file to WAL or copies a big WAL back at close (both used to fail with "database is
locked").
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

PROCESSES = 8
COMMITS = 250  # per process: 8 writers at it for ~7 s on SQLite here; the bench runs 500
SMALL_FILES = 8  # a process's own small files (inline rows)
BIG = 70_000  # > 64 KiB: a blob file
OWN_BIG_EVERY = 10  # steps between rewrites of a process's own big file
SHARED_BIG_EVERY = 25  # steps between rewrites of the big file all processes share
SHARED_SMALL_EVERY = 5


def content(*key: object, size: int) -> bytes:
    """Bytes determined by `key` alone: the same in every process (Random seeds a str by
    its SHA-512, not by hash())."""
    return random.Random(repr(key)).randbytes(size)


def expected_digest(files: dict[str, str]) -> str:
    """Digest of a manifest path -> SHA-256 of the bytes, as the parent sees it in a tree."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


class Workdir:
    """A process's directory and what it last wrote there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, str] = {}

    def write(self, rel: str, data: bytes) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        # a new file, not the old one truncated: ext4 flushes a file truncated and rewritten
        # when it is closed (auto_da_alloc), 2 ms a write here, which is not the store's time
        p.unlink(missing_ok=True)
        p.write_bytes(data)
        self.files[rel] = hashlib.sha256(data).hexdigest()

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink()
        del self.files[rel]

    def step(self, proc: int, step: int) -> None:
        """Change the files for commit number `step`."""
        if step == 0:  # the same in every process
            self.write("shared/small.txt", content("shared-small", 0, size=300))
            self.write("shared/big.bin", content("shared-big", 0, size=BIG))
            return
        for k in (2 * step % SMALL_FILES, (2 * step + 1) % SMALL_FILES):
            self.write(f"own/f{k}.txt", content("own", proc, step, k, size=100 + step * 37 % 1900))
        if step % SHARED_SMALL_EVERY == 0:
            self.write("shared/small.txt", content("shared-small", step, size=300))
        if step % OWN_BIG_EVERY == 1:
            self.write("own/big.bin", content("own-big", proc, step, size=BIG + step))
        if step % SHARED_BIG_EVERY == 0:
            self.write("shared/big.bin", content("shared-big", step, size=BIG))
        if step % 50 == 10:
            self.write("own/extra/x.txt", content("extra", proc, step, size=50))
        elif step % 50 == 35:
            self.remove("own/extra/x.txt")


def worker(proc: int, base: Path, commits: int, db_url: str) -> None:
    """One process: wait for the others, open the store, commit `commits` times; write what
    it did to base/result-<proc>.json."""
    from wtb_conf.store import open_store

    (base / "sync" / f"ready-{proc}").touch()  # imported: all open the store at once
    while not (base / "sync" / "go").exists():
        time.sleep(0.002)
    result: dict = {"commits": [], "errors": [], "run": None}

    def error(what: str) -> None:
        result["errors"].append(f"process {proc}, {what}:\n{traceback.format_exc()}")

    try:
        store = open_store(db_url, base / "blobs")
    except Exception:
        error("open_store")
        (base / f"result-{proc}.json").write_text(json.dumps(result))
        return
    work = Workdir(base / f"work-{proc}")
    try:
        sweep = store.create_sweep(["concurrency", str(proc)])
        run = store.start_run(sweep, proc, [f"proc={proc}"], "concurrency", "{}", "digest",
                              str(work.root), identity={"job_key": f"key-{proc}"})
        thread = f"{run}/case"
        store.start_thread(run, thread, "case")
        result["run"] = run
    except Exception:
        error("run records")
        run = thread = None
    parent = None
    for step in range(commits):
        work.step(proc, step)
        t = time.perf_counter()
        try:
            commit = store.commit_dir(work.root, message="base" if step == 0 else
                                      f"process {proc} step {step}", parent=parent)
        except Exception:
            error(f"commit_dir step {step}")
            continue
        latency = time.perf_counter() - t
        result["commits"].append([commit, parent, latency, expected_digest(work.files)])
        parent = commit
        if run is not None:
            try:
                store.link_checkpoint(run, thread, "", f"cp-{step}", step, "loop", ["node"],
                                      commit)
            except Exception:
                error(f"link_checkpoint step {step}")
    try:
        if run is not None:
            store.finish_thread(thread, "completed", {"steps": commits}, parent)
            store.finish_run(run, "completed", parent, {"commits": commits})
            store.finish_sweep(sweep)
        store.close()
    except Exception:
        error("finishing")
    (base / f"result-{proc}.json").write_text(json.dumps(result))


def twin_worker(proc: int, base: Path, processes: int, db_url: str) -> None:
    """One of `processes` identical jobs recorded at the same moment, as wtb_conf.job.task does:
    record the run, then look for an earlier run of the same job still running (the one to
    wait for and reuse). The one that finds none completes once all have looked; the others
    wait for it to end, then must find it as their cache hit."""
    from wtb_conf.job.admission import _wait_for_twin
    from wtb_conf.store import open_store

    sync = base / "sync"
    (sync / f"ready-{proc}").touch()
    while not (sync / "go").exists():
        time.sleep(0.002)
    with open_store(db_url, base / "blobs") as store:
        sweep = store.create_sweep(["twins", str(proc)])
        run = store.start_run(sweep, 0, [], "twins", "{}", "digest", str(base),
                              identity={"job_key": "the-same-job"})
        first_twin = store.running_twin(run, "the-same-job")
        (sync / f"looked-{proc}").touch()
        if first_twin is None:  # the one that runs
            deadline = time.monotonic() + 60
            while len(list(sync.glob("looked-*"))) < processes:
                assert time.monotonic() < deadline, "the other jobs did not look within 60 s"
                time.sleep(0.005)
            store.finish_run(run, "completed", None, {"ran": proc})
            hit = None
        else:  # the job's own wait (wtb_conf.job.admission), bounded by the test's timeout
            _wait_for_twin(store, run, "the-same-job")
            hit = store.cached_run("the-same-job")
            if hit is not None:
                store.finish_cached(run, hit)
        store.finish_sweep(sweep)
    (base / f"result-{proc}.json").write_text(json.dumps(
        {"run": run, "twin": first_twin, "hit": hit and hit["run_id"]}))


def start_workers(base: Path, processes: int, kind: str, *args: object,
                  timeout: float = 600) -> list[dict]:
    """Run `processes` workers (`kind`: commits or twins) released at once; their results,
    in process order. Each one's output goes to base/out-<i>.txt."""
    (base / "sync").mkdir(parents=True)
    procs = []
    for i in range(processes):
        with open(base / f"out-{i}.txt", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, __file__, kind, str(i), str(base), *map(str, args)],
                stdout=out, stderr=subprocess.STDOUT))

    def output(i: int) -> str:
        return f"worker {i} exited {procs[i].returncode}:\n" + (
            base / f"out-{i}.txt").read_text()[-5000:]

    try:
        deadline = time.monotonic() + 120
        while len(list((base / "sync").glob("ready-*"))) < processes:
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            assert not dead, f"a worker exited before starting: {output(dead[0])}"
            assert time.monotonic() < deadline, "workers did not start within 120 s"
            time.sleep(0.01)
        (base / "sync" / "go").touch()
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            failed = [i for i, p in enumerate(procs) if p.poll()]
            assert not failed, output(failed[0])
            time.sleep(0.05)
        late = [i for i, p in enumerate(procs) if p.poll() is None]
        assert not late, f"workers {late} still running after {timeout} s"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, p in enumerate(procs):
        assert p.returncode == 0, output(i)
    return [json.loads((base / f"result-{i}.json").read_text()) for i in range(processes)]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def check_store(base: Path, db_url: str, results: list[dict], commits: int) -> None:
    """Every returned commit exists with its parent, holds exactly the files its process
    wrote, and every blob re-hashes; the tables hold what the processes wrote."""
    from sqlalchemy import text

    from wtb_conf.store import open_store
    from wtb_conf.store.schema import read_conn

    processes = len(results)
    with open_store(db_url, base / "blobs") as store:
        with read_conn(store.engine) as conn:
            parents = dict(conn.execute(text("SELECT id, parent FROM commits")).all())
        verified: set[str] = set()
        for proc, result in enumerate(results):
            for step, (commit, parent, _, digest) in enumerate(result["commits"]):
                assert commit in parents, f"process {proc} step {step}: {commit} not stored"
                assert parents[commit] == parent, f"process {proc} step {step}: wrong parent"
                tree = store.tree(commit)  # re-hashes the tree
                seen = {p: e.blob for p, e in tree.items()}
                assert expected_digest(seen) == digest, (
                    f"process {proc} step {step}: commit {commit} does not hold the files "
                    "written")
                for rel, entry in tree.items():
                    if entry.blob not in verified:
                        assert len(store.read_blob(entry.blob, rel)) == entry.size
                        verified.add(entry.blob)
        ids = {c[0] for r in results for c in r["commits"]}
        # the first commit is the same in every process; all others are distinct
        assert len(ids) == 1 + processes * (commits - 1)
        with read_conn(store.engine) as conn:
            def count(sql: str) -> int:
                return conn.execute(text(sql)).scalar_one()

            assert count("SELECT count(*) FROM commits") == len(ids)
            assert count("SELECT count(*) FROM checkpoint_links") == processes * commits
            assert count("SELECT count(*) FROM runs WHERE status = 'completed'") == processes
            assert count("SELECT count(*) FROM threads WHERE status = 'completed'") == processes
            assert count("SELECT count(*) FROM sweeps WHERE status = 'completed'") == processes
            links = conn.execute(text("SELECT run_id, step, commit_id FROM checkpoint_links"))
            by_run = {r["run"]: r for r in results}
            for run_id, step, commit_id in links:
                assert by_run[run_id]["commits"][step][0] == commit_id
            big = {r[0] for r in conn.execute(text("SELECT id FROM blobs WHERE data IS NULL"))}
        on_disk = {p.parent.name + p.name for p in (base / "blobs" / "objects").glob("*/*")}
        assert on_disk == big, "blob files on disk differ from the blob rows without data"
        assert len(big) >= processes * (commits // OWN_BIG_EVERY), "too few blob files"
        assert len(verified) > len(big)


@pytest.mark.slow
def test_concurrent_commits(db_url, tmp_path):
    started = time.perf_counter()
    results = start_workers(tmp_path, PROCESSES, "commits", COMMITS, db_url)
    wall = time.perf_counter() - started
    errors = [e for r in results for e in r["errors"]]
    assert not errors, f"{len(errors)} errors; the first:\n{errors[0]}"
    assert [len(r["commits"]) for r in results] == [COMMITS] * PROCESSES
    checked = time.perf_counter()
    check_store(tmp_path, db_url, results, COMMITS)
    latencies = [c[2] * 1e3 for r in results for c in r["commits"]]
    print(f"\n{PROCESSES} processes x {COMMITS} commits in {wall:.1f} s "
          f"({len(latencies) / wall:.0f} commits/s), checked in "
          f"{time.perf_counter() - checked:.1f} s; commit latency: "
          f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
          f"max {max(latencies):.1f} ms, mean {statistics.fmean(latencies):.1f} ms")


def test_sqlite_stores_opened_at_once_wait_while_one_turns_the_new_file_to_wal(tmp_path):
    """Processes opening a new store at the same moment: one turns the file to WAL, which
    needs it alone. SQLite does not wait (busy_timeout) for a process that is in the middle
    of it (it holds the reserved lock of a rollback-journal file), it says "database is
    locked" at once: ~1 in 1000 opens of 8 at once failed so. Here the other process is held
    in that state for 1 s; the store opens once it is done."""
    from wtb_conf.store import open_store

    db = tmp_path / "wtb.db"
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (a)")  # a new file, not WAL yet
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1, other.execute, ["COMMIT"])
    release.start()
    started = time.perf_counter()
    try:
        with open_store(str(db), tmp_path / "blobs") as store:
            waited = time.perf_counter() - started
            assert store.runs() == []
    finally:
        release.join()
        other.close()
    assert waited > 0.9
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
def test_sqlite_open_waits_out_a_checkpoint_at_close(tmp_path):
    """The last connection to close a store copies the whole WAL into the database holding an
    exclusive lock: seconds for a big WAL (1.2 GB took 18 s here). A process opening the
    store meanwhile waits for it; it used to fail with "database is locked" after 5 s, the
    sqlite3 driver's default timeout, because busy_timeout came after journal_mode."""
    from wtb_conf.store import open_store

    db = tmp_path / "wtb.db"
    open_store(str(db), tmp_path / "blobs").close()
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # keeps the file lock once taken
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("COMMIT")
    release = threading.Timer(6, holder.close)  # longer than the driver's default 5 s
    release.start()
    started = time.perf_counter()
    try:
        with open_store(str(db), tmp_path / "blobs") as store:
            waited = time.perf_counter() - started
            assert store.runs() == []
    finally:
        release.join()
    assert waited > 5


@pytest.mark.slow
def test_identical_jobs_recorded_at_once_one_runs_the_others_reuse_it(db_url, tmp_path):
    """8 runs of the same job recorded at the same moment: exactly one finds no earlier twin
    running and runs; every other one waits for that one and gets it as its cache hit. (The
    order is the one the job key's lock gives: SQLite's write lock, PostgreSQL's advisory
    lock on the key; a run's started_at is taken inside the transaction that inserts it.)"""
    from wtb_conf.store import open_store

    results = start_workers(tmp_path, PROCESSES, "twins", PROCESSES, db_url, timeout=120)
    winners = [r["run"] for r in results if r["twin"] is None]
    assert len(winners) == 1, f"{len(winners)} of {PROCESSES} identical jobs ran"
    assert all(r["hit"] == winners[0] for r in results if r["twin"] is not None)
    with open_store(db_url, tmp_path / "blobs") as store:
        statuses = sorted(r["status"] for r in store.runs())
    assert statuses == ["cached"] * (PROCESSES - 1) + ["completed"]


if __name__ == "__main__":
    kind, proc, base = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    {"commits": worker, "twins": twin_worker}[kind](proc, base, int(sys.argv[4]), sys.argv[5])
