"""Concurrency benchmark: N processes committing into one store at once, SQLite and PostgreSQL.

    python benchmarks/concurrency_bench.py [--processes 1,2,4,8] [--commits 500]
                                           [--db sqlite,postgresql]

The workload is tests/reliability/test_concurrency.py's (its Workdir, imported from there):
each process commits its own directory `--commits` times (parent: the commit before), small
files inline, some over 64 KiB as blob files, some bytes written by every process (the same
blob added at once), and links a checkpoint to every commit as a job does. Each process
count runs in a fresh store, one after another, all released at the same moment.

Printed per process count: each process's throughput and latency, then the overall figures
side by side with ratios to 1 process of the same database, and PostgreSQL's to SQLite's at
the same count. "lock wait" is, on SQLite, the time BEGIN IMMEDIATE waited for the write
lock (SQLite's busy handler: it polls with sleeps of 1 to 100 ms, it is not woken when the
lock frees); on PostgreSQL, the time the store's advisory locks waited (a commit takes the
'blobs' lock shared and its own directory's: they should not wait); "busy" counts "database
is locked" errors (each retried, up to 3 times) and should be 0; "WAL max" is the largest
SQLite's -wal file grew, sampled every 20 ms.

PostgreSQL is a server this script starts (benchmarks/store_bench.py's BenchServer: durable,
synchronous_commit=off, the durability of the SQLite store's settings), a fresh database per
process count, reached over TCP on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

from test_concurrency import Workdir, percentile  # noqa: E402  (the test's workload)


def _locking(statement: str) -> bool:
    return statement.startswith("BEGIN IMMEDIATE") or "pg_advisory_xact_lock" in statement


def worker(proc: int, base: Path, commits: int, db_url: str) -> None:
    """One process: wait for the go, commit `commits` times, write base/result-<proc>.json."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    from wtb_conf.store import open_store

    (base / "sync" / f"ready-{proc}").touch()  # imported: all open the store at once
    while not (base / "sync" / "go").exists():
        time.sleep(0.002)
    t0 = time.perf_counter()
    store = open_store(db_url, base / "blobs")
    opened = time.perf_counter() - t0
    waits: list[float] = []
    holds: list[float] = []
    began: list[float] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _before(conn, cursor, statement, *args):
        if _locking(statement):
            began.append(time.perf_counter())

    @event.listens_for(store.engine, "after_cursor_execute")
    def _after(conn, cursor, statement, *args):
        if _locking(statement):
            now = time.perf_counter()
            waits.append(now - began[-1])
            began[-1] = now

    @event.listens_for(store.engine, "commit")
    def _commit(conn):
        if began:
            holds.append(time.perf_counter() - began[-1])

    busy = 0

    def retried(fn, *args, **kwargs):
        nonlocal busy
        for attempt in range(4):
            try:
                return fn(*args, **kwargs)
            except OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or attempt == 3:
                    raise
                busy += 1

    work = Workdir(base / f"work-{proc}")
    sweep = retried(store.create_sweep, ["bench", str(proc)])
    run = retried(store.start_run, sweep, proc, [], "bench", "{}", "digest", str(work.root))
    thread = f"{run}/case"
    retried(store.start_thread, run, thread, "case")
    latencies = []
    parent = None
    for step in range(commits):
        work.step(proc, step)
        t = time.perf_counter()
        parent = retried(store.commit_dir, work.root,
                         message="base" if step == 0 else f"process {proc} step {step}",
                         parent=parent)
        latencies.append(time.perf_counter() - t)
        retried(store.link_checkpoint, run, thread, "", f"cp-{step}", step, "loop", ["node"],
                parent)
    retried(store.finish_thread, thread, "completed", None, parent)
    retried(store.finish_run, run, "completed", parent)
    retried(store.finish_sweep, sweep)
    store.close()
    elapsed = time.perf_counter() - t0
    (base / f"result-{proc}.json").write_text(json.dumps(
        {"latencies": latencies, "elapsed": elapsed, "open": opened, "waits": waits,
         "holds": holds, "busy": busy}))


def run_config(processes: int, commits: int, tmp: Path, db: str, server) -> dict:
    base = tmp / f"{db}-p{processes}"
    (base / "sync").mkdir(parents=True)
    db_url = f"sqlite:///{base / 'wtb.db'}" if db == "sqlite" else server.new_url(False)
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), str(base),
                               str(commits), db_url]) for i in range(processes)]
    while len(list((base / "sync").glob("ready-*"))) < processes:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a worker exited before starting")
        time.sleep(0.01)
    wal = base / "wtb.db-wal"
    wal_max = 0
    t0 = time.perf_counter()
    (base / "sync" / "go").touch()
    while any(p.poll() is None for p in procs):
        try:
            wal_max = max(wal_max, wal.stat().st_size)
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"{processes} processes: a worker failed")
    results = [json.loads((base / f"result-{i}.json").read_text()) for i in range(processes)]
    shutil.rmtree(base)
    return {"processes": processes, "wall": wall, "results": results, "wal_max": wal_max,
            "db": db}


def ms(values: list[float], q: float | None = None) -> float:
    if not values:
        return 0.0
    return 1e3 * (max(values) if q is None else percentile(values, q))


def report(cfg: dict, commits: int) -> dict:
    n, wall, results = cfg["processes"], cfg["wall"], cfg["results"]
    print(f"\n{cfg['db']}: {n} process{'es' if n > 1 else ''} x {commits} commits")
    print(f"  {'proc':>4} {'commits/s':>9} {'open ms':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'lock wait total s':>17} {'waited':>6} {'busy':>4}")
    for i, r in enumerate(results):
        lat, waits = r["latencies"], r["waits"]
        print(f"  {i:>4} {len(lat) / r['elapsed']:>9.1f} {r['open'] * 1e3:>8.0f} "
              f"{ms(lat, 50):>7.1f} {ms(lat, 99):>7.1f} {ms(lat):>7.1f} "
              f"{sum(waits):>17.2f} {sum(w > 0.001 for w in waits):>6} {r['busy']:>4}")
    lat = [x for r in results for x in r["latencies"]]
    waits = [x for r in results for x in r["waits"]]
    holds = [x for r in results for x in r["holds"]]
    out = {
        "processes": n, "commits": len(lat), "wall": wall, "rate": len(lat) / wall,
        "p50": ms(lat, 50), "p99": ms(lat, 99), "max": ms(lat), "mean": 1e3 * statistics.fmean(lat),
        "wait_p99": ms(waits, 99), "wait_max": ms(waits),
        "waited": sum(w > 0.001 for w in waits) / max(1, len(waits)),
        "hold_p50": ms(holds, 50), "hold_p99": ms(holds, 99),
        "busy": sum(r["busy"] for r in results), "wal_max": cfg["wal_max"] / 2**20,
        "db": cfg["db"],
    }
    print(f"  all: {out['commits']} commits in {wall:.1f} s = {out['rate']:.0f} commits/s; "
          f"commit p50 {out['p50']:.1f} / p99 {out['p99']:.1f} / max {out['max']:.1f} ms; "
          f"{len(waits)} {'write transactions' if cfg['db'] == 'sqlite' else 'advisory locks'}"
          f", {out['waited']:.0%} waited for the lock "
          f"(p99 {out['wait_p99']:.1f} ms, max {out['wait_max']:.1f} ms), lock held p50 "
          f"{out['hold_p50']:.2f} / p99 {out['hold_p99']:.1f} ms; busy errors {out['busy']}; "
          f"WAL max {out['wal_max']:.0f} MB")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", default="1,2,4,8", help="comma-separated process counts")
    ap.add_argument("--commits", type=int, default=500, help="commits per process")
    ap.add_argument("--db", default="sqlite,postgresql", help="comma-separated: sqlite, "
                    "postgresql")
    ap.add_argument("--tmp", default=None, help="where the stores go (default: a temp dir)")
    args = ap.parse_args()
    counts = [int(x) for x in args.processes.split(",")]
    dbs = args.db.split(",")
    print(f"{os.cpu_count()} CPUs; processes {counts}, {args.commits} commits each; {dbs}")
    tmp = Path(tempfile.mkdtemp(prefix="concurrency-bench-", dir=args.tmp))
    server = None
    if "postgresql" in dbs:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from store_bench import BenchServer

        server = BenchServer().start()
    try:  # the databases take turns at each count: load drifts over a run on these VMs
        rows = [report(run_config(n, args.commits, tmp, db, server), args.commits)
                for n in counts for db in dbs]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.stop()
    print(f"\nside by side (x: versus 1 process of the same database; pg/sqlite: PostgreSQL "
          f"versus SQLite at the same count); load average {os.getloadavg()[0]:.1f}")
    cols = ["database", "processes", "commits/s", "x", "p50 ms", "x", "p99 ms", "x", "max ms",
            "wait p99 ms", "waited", "busy", "WAL max MB", "pg/sqlite c/s", "pg/sqlite p99"]
    print("  ".join(f"{c:>11}" for c in cols))
    for r in rows:
        one = next(o for o in rows if o["db"] == r["db"] and o["processes"] == counts[0])
        lite = next((o for o in rows if o["db"] == "sqlite" and
                     o["processes"] == r["processes"]), None)
        pg = r["db"] != "sqlite" and lite is not None
        vals = [r["db"], r["processes"], f"{r['rate']:.0f}", f"{r['rate'] / one['rate']:.2f}",
                f"{r['p50']:.1f}", f"{r['p50'] / one['p50']:.2f}", f"{r['p99']:.1f}",
                f"{r['p99'] / one['p99']:.2f}", f"{r['max']:.0f}", f"{r['wait_p99']:.1f}",
                f"{r['waited']:.0%}", r["busy"],
                f"{r['wal_max']:.0f}" if r["db"] == "sqlite" else "-",
                f"{r['rate'] / lite['rate']:.2f}" if pg else "",
                f"{r['p99'] / lite['p99']:.2f}" if pg else ""]
        print("  ".join(f"{v:>11}" for v in vals))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
