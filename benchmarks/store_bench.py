"""Store benchmark: commit_dir on SQLite and on PostgreSQL, against `git add -A && git commit`
on an identical tree.

    python benchmarks/store_bench.py [--files 1000] [--size 10240] [--repeat 5]
                                     [--db sqlite,postgresql,postgresql-sync]

Each figure is the median of --repeat fresh runs. Three store layouts are measured in the same
run: the default (blobs up to 64 KiB inline in the database), all blobs inline, and one file
per blob (inline_max=0), which is what the default's threshold was chosen against; each on
every database of --db:

- `sqlite`: the store's own settings (WAL, synchronous=NORMAL: a commit is not fsynced, a
  crash of the machine may lose the last transactions but never corrupts older ones);
- `postgresql`: a PostgreSQL server this script starts (tests/pgserver.py's binaries, a temp
  dir, reached over TCP on 127.0.0.1) with fsync on and synchronous_commit=off: the same
  durability as SQLite's settings above;
- `postgresql-sync`: the same server, synchronous_commit=on (every commit waits for its WAL
  flush): PostgreSQL's default, more than the SQLite store promises.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wtb_conf.store import DEFAULT_INLINE_MAX, open_store

ROOT = Path(__file__).resolve().parent.parent

LAYOUTS = {
    "default (inline <= 64 KiB)": DEFAULT_INLINE_MAX,
    "all inline": 1 << 40,
    "file per blob": 0,
}


def make_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        sub = root / f"d{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(os.urandom(size))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class BenchServer:
    """A PostgreSQL server for the benchmark: tests/pgserver.py's, but durable (fsync and
    full-page writes on: the test server turns them off), and a database per store with its
    own synchronous_commit."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from pgserver import PgServer

        self.server = PgServer()

    def start(self) -> BenchServer:
        s = self.server
        s._run("initdb", "-D", str(s.data), "-U", s.user, "-A", "trust", "-E", "UTF8")
        options = (f"-c listen_addresses=127.0.0.1 -c port={s.port} "
                   f"-c unix_socket_directories={s.root} -c max_connections=100")
        s._run("pg_ctl", "-D", str(s.data), "-l", str(s.root / "server.log"), "-o", options,
               "-w", "-t", "60", "start")
        return self

    def new_url(self, synchronous_commit: bool) -> str:
        import psycopg

        name = self.server.new_database()
        with psycopg.connect(self.server.url(driver="postgresql"), autocommit=True) as conn:
            value = "on" if synchronous_commit else "off"
            conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {value}')
        return self.server.url(name)

    def stop(self) -> None:
        self.server.stop()


def store_url(db: str, work: Path, server: BenchServer | None) -> str:
    if db == "sqlite":
        return f"sqlite:///{work / 'wtb.db'}"
    assert server is not None
    return server.new_url(synchronous_commit=db == "postgresql-sync")


def bench_store(tree: Path, work: Path, inline_max: int, db_url: str) -> dict[str, float]:
    src = work / "src"
    shutil.copytree(tree, src)
    store = open_store(db_url, work / "blobs", inline_max=inline_max)
    first = timed(lambda: store.commit_dir(src, "first"))
    assert store.last_commit.hashed == store.last_commit.files
    again = timed(lambda: store.commit_dir(src, "again"))
    # Files written in the last filesystem-clock tick before the first commit are "racy" and
    # rightly re-read once; report how many so the figure is honest.
    racy = store.last_commit.hashed
    victim = next(src.rglob("*.bin"))
    victim.write_bytes(os.urandom(victim.stat().st_size))
    one = timed(lambda: store.commit_dir(src, "one changed"))
    close = timed(store.close)  # SQLite: includes the WAL checkpoint the commits deferred
    return {"first": first, "unchanged": again, "one changed": one, "close": close,
            "racy": racy}


def bench_git(tree: Path, work: Path) -> dict[str, float]:
    repo = work / "git"
    shutil.copytree(tree, repo)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)

    git("init", "-q")
    first = timed(lambda: (git("add", "-A"), git("commit", "-q", "-m", "first")))
    again = timed(lambda: (git("add", "-A"), git("commit", "-q", "--allow-empty", "-m", "again")))
    victim = next(repo.rglob("*.bin"))
    victim.write_bytes(os.urandom(victim.stat().st_size))
    one = timed(lambda: (git("add", "-A"), git("commit", "-q", "-m", "one")))
    return {"first": first, "unchanged": again, "one changed": one, "close": 0.0, "racy": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--size", type=int, default=10 * 1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--db", default="sqlite,postgresql,postgresql-sync",
                    help="comma-separated: sqlite, postgresql, postgresql-sync")
    args = ap.parse_args()
    dbs = args.db.split(",")
    server = BenchServer().start() if any(d.startswith("postgresql") for d in dbs) else None

    results: dict[str, list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "tree"
            make_tree(tree, args.files, args.size)
            for i in range(args.repeat):
                for name, inline_max in LAYOUTS.items():
                    for db in dbs:
                        work = Path(tmp) / f"{i}-{inline_max}-{db}"
                        results.setdefault(f"{db}: {name}", []).append(
                            bench_store(tree, work, inline_max, store_url(db, work, server)))
                results.setdefault("git", []).append(bench_git(tree, Path(tmp) / f"{i}-git"))
    finally:
        if server is not None:
            server.stop()

    med = {n: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for n, runs in results.items()}
    print(f"{args.files} files of {args.size} bytes, median of {args.repeat} runs; load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':45}{'first':>10}{'unchanged':>12}{'one changed':>13}{'close':>9}"
          f"{'racy':>6}{'git/first':>11}{'first/sqlite':>14}{'unch./sqlite':>14}")
    for name, m in med.items():
        ratio = med["git"]["first"] / m["first"]
        layout = name.split(": ", 1)[-1]
        base = med.get(f"sqlite: {layout}")
        versus = (f"{m['first'] / base['first']:13.2f}x{m['unchanged'] / base['unchanged']:13.2f}x"
                  if base and name != "git" else "")
        print(f"{name:45}{m['first'] * 1e3:8.1f}ms{m['unchanged'] * 1e3:10.1f}ms"
              f"{m['one changed'] * 1e3:11.1f}ms{m['close'] * 1e3:7.1f}ms{m['racy']:6.0f}"
              f"{ratio:10.1f}x{versus}")


if __name__ == "__main__":
    main()
