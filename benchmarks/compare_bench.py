"""Compare benchmark: `wtb compare` over a store of 10,000+ runs, as a user runs it.

    python benchmarks/compare_bench.py [--sweeps 50] [--jobs 200] [--big 10000] [--repeat 3]
                                       [--store DIR] [--profile CASE]

Builds a store with the real Store API: --big jobs in one sweep (the worst case), then
--sweeps sweeps of --jobs jobs (so `last` is one of those), each job with 3 params varying
(`variant=...`, `workflow.nodes.validate.temp=...`, `workflow.routes...max_invalid=...`),
2 cases, --checkpoints linked checkpoints per case, 4 metrics per case (and their means, as
job.metrics_of writes them), 3 scores per case (summary by scoring.summarize), ~5% failed
runs (one case failing in a node). To build 20,000 runs in seconds, the Store's own methods
run unchanged against a stand-in engine that collects their statements, which are then
executed with executemany in one transaction per --batch runs (same SQL, same parameters).

Then times each `compare` in a subprocess (`python -m wtb_conf.cli` and the `wtb` script),
median of --repeat runs after a warm-up, stdout to a pipe (rich renders 200 columns wide),
bytecode cached; and the same work in-process (compare.rows() and the output alone), and
the interpreter and imports alone: the floor every command pays.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from wtb_conf.store import open_store

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.0  # seconds
CASES = ("orders", "returns")
METRICS = {"rows_in": "rows_in", "rows_out": "rows_out", "invalid_ratio": "invalid_ratio",
           "total_amount": "total_amount"}  # workflow.metrics: name -> state key
NODES = ("load", "clean", "validate", "summarize")
VARIANTS = ("drop_invalid", "fill_defaults", "strict", "lenient")
COMPARE = {"objective": "acc", "mode": "max"}
TRACEBACK = "".join(
    f'  File "/proj/experiments/file_processing/nodes.py", line {40 + i}, in validate\n'
    f"    check(row, settings['rules'][{i}])\n" for i in range(12)
) + "ValueError: amount is not a number: 'n/a'\n"


# -- building the store ----------------------------------------------------------------


class _Recorder:
    """Stands in for `store.engine` while building: the Store's write methods run as they
    are (`with self.engine.begin() as conn: conn.execute(text(...), params)`) and their
    statements are collected; flush() runs them with executemany, statement by statement in
    first-seen order (runs before threads before their updates), in one transaction."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect = engine.dialect  # what the Store's methods ask a connection for
        self.batches: dict[str, list[dict[str, Any]]] = {}

    @contextlib.contextmanager
    def begin(self):
        yield self

    def execute(self, clause: Any, params: dict[str, Any] | None = None) -> None:
        self.batches.setdefault(clause.text, []).append(params or {})

    def flush(self) -> int:
        raw = self.engine.raw_connection()  # isolation_level=None: the transaction is ours
        try:
            cur = raw.cursor()
            cur.execute("BEGIN IMMEDIATE")
            for sql, rows in self.batches.items():
                cur.executemany(sql, rows)  # sqlite3 takes `:name` parameters as text() does
            cur.execute("COMMIT")
        finally:
            raw.close()
        n = sum(map(len, self.batches.values()))
        self.batches.clear()
        return n


class _Clock:
    """Simulated time for the records (runs that last seconds, sweeps hours apart)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, tzinfo=UTC)

    def iso(self) -> str:
        return self.now.isoformat(timespec="microseconds")


@contextlib.contextmanager
def _building(clock: _Clock):
    """The records' clock is the simulated one, and each SQL text is parsed once (the
    Store's methods build the same `text(...)` for every call; parsing it is most of their
    cost)."""
    from sqlalchemy import text

    from wtb_conf.store import evaluations, records

    saved = [(m, m.now_iso, m.text) for m in (records, evaluations)]
    cached = functools.lru_cache(maxsize=None)(text)
    for m, _, _ in saved:
        m.now_iso, m.text = clock.iso, cached
    try:
        yield
    finally:
        for m, now_iso, text_ in saved:
            m.now_iso, m.text = now_iso, text_


def _params(j: int) -> list[str]:
    """Job j's overrides: 3 params varying, all combinations distinct, one fixed."""
    return [f"variant={VARIANTS[j % 4]}",
            f"workflow.nodes.validate.temp={(j // 4) % 10 / 10}",
            f"workflow.routes.validate.router.max_invalid={0.01 * (1 + j // 40):.2f}",
            "+experiment=bench"]


def _state(rng: random.Random, case: str) -> dict[str, Any]:
    rows = [{"id": i, "product": f"p{rng.randrange(50)}", "amount": round(rng.uniform(-50, 90),
            2), "region": rng.choice(["eu", "us", None])} for i in range(12)]
    clean = [r for r in rows if r["region"]]
    return {"input_csv": f"experiments/file_processing/data/{case}.csv", "rows": rows,
            "settings": {"currency": "EUR", "rules": ["amount", "product"]}, "clean": clean,
            "rejected": [r["id"] for r in rows if not r["region"]], "rows_in": len(rows),
            "rows_out": len(clean), "invalid_ratio": 1 - len(clean) / len(rows),
            "quarantined": 0, "total_amount": round(sum(r["amount"] for r in clean), 2),
            "log": ["load", "clean", "validate", "summarize"]}


def _config_template(workflow: dict[str, Any]) -> str:
    """What job.run stores, the resolved config (here the demo workflow), with `{temp}`,
    `{max_invalid}` and `{variant}` for the job's params (one YAML dump, not one a job)."""
    wf = json.loads(json.dumps(workflow))
    wf["nodes"]["validate"]["temp"] = 0.123456789
    wf["routes"]["validate"]["router"]["max_invalid"] = 0.987654321
    text = yaml.safe_dump({
        "workflow": wf, "variant": {"name": "VARIANT"},
        "env": {"python": None, "packages": []},
        "storage": {"db_url": "sqlite:///data/wtb.db", "blob_root": "data/blobs",
                    "checkpoints": "data/checkpoints.db", "inline_max": 65536},
        "rerun": False, "share_prefixes": True, "compare": COMPARE}, sort_keys=False)
    text = text.replace("{", "{{").replace("}", "}}")
    return text.replace("0.123456789", "{temp}").replace("0.987654321", "{max_invalid}") \
        .replace("VARIANT", "{variant}")


def _config_yaml(template: str, params: list[str]) -> str:
    values = dict(p.split("=", 1) for p in params)
    return template.format(variant=values["variant"],
                           temp=values["workflow.nodes.validate.temp"],
                           max_invalid=values["workflow.routes.validate.router.max_invalid"])


def _digest(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def build(db: Path, blobs: Path, sweeps: int, jobs: int, big: int, checkpoints: int,
          batch: int, seed: int = 0) -> dict[str, Any]:
    """The store: a sweep of `big` jobs, then `sweeps` sweeps of `jobs` jobs."""
    from wtb_conf.job.admission import installed  # what job.run writes, for the data
    from wtb_conf.job.scoring import metrics_of, summarize

    rng = random.Random(seed)
    template = _config_template(
        yaml.safe_load((ROOT / "conf/workflow/file_processing.yaml").read_text()))
    lock = installed()
    clock = _Clock()
    store = open_store(str(db), blobs)
    out = db.parent / "out"
    for case in CASES:
        (out / case).mkdir(parents=True, exist_ok=True)
        (out / case / "report.md").write_text(f"# {case}\n")
    commit = store.commit_dir(out, message="final")
    engine, recorder = store.engine, _Recorder(store.engine)
    sweep_ids, statements = [], 0
    with _building(clock):
        for s, n in enumerate(([big] if big else []) + [jobs] * sweeps):
            clock.now += timedelta(hours=1)
            store.engine = recorder
            argv = ["-m", "+experiment=bench"]
            sweep_id = store.create_sweep(argv, f"/proj/multirun/2026-11-01/{s:02d}-00-00")
            sweep_ids.append(sweep_id)
            sweep_start = clock.now
            for j in range(n):
                params = _params(j)
                clock.now = sweep_start + timedelta(seconds=10 * (j // 2))  # 2 actors
                cfg = _config_yaml(template, params)
                run_id = store.start_run(
                    sweep_id, j, params, "file_processing", cfg, _digest(cfg),
                    f"/proj/multirun/2026-11-01/{s:02d}-00-00/{j}", python=sys.executable,
                    env_lock=lock, identity={"job_key": _digest(cfg, 1),
                                             "env_digest": _digest(lock),
                                             "code_digest": _digest(s)},
                    launch_dir="/proj", inputs_commit=commit)
                failing = CASES[1] if rng.random() < 0.05 else None
                finals, statuses, scored = {}, {}, {}
                for case in CASES:
                    thread_id = f"{run_id}/{case}"
                    store.start_thread(run_id, thread_id, case)
                    path: list[str] = []
                    for step in range(-1, checkpoints - 1):
                        nodes = [] if step < 0 else [NODES[step % len(NODES)]]
                        for node in nodes:
                            path.append(node)
                            store.log_event("node", {"thread_id": thread_id, "node": node},
                                            run_id)
                        store.link_checkpoint(run_id, thread_id, "", _digest(thread_id, step)
                                              [:32], step, "input" if step < 0 else "loop",
                                              nodes, commit, path)
                    clock.now += timedelta(seconds=rng.uniform(2, 30))
                    final = _state(rng, case)
                    if case == failing:
                        statuses[case] = "failed"
                        store.finish_thread(thread_id, "failed", final, commit,
                                            "ValueError: amount is not a number: 'n/a'",
                                            TRACEBACK, "validate")
                        continue
                    statuses[case] = "completed"
                    finals[case] = final
                    store.finish_thread(thread_id, "completed", final, commit)
                    acc = rng.uniform(0.5, 1.0)
                    scored[case] = {"scores": {"acc": acc, "f1": acc * rng.uniform(0.8, 1),
                                               "total_ok": rng.random() < 0.7}, "errors": {}}
                metrics = metrics_of(finals, METRICS)
                store.add_evaluation(run_id, "run", _digest("eval"), COMPARE, scored,
                                     summarize(scored, statuses))
                if failing:
                    store.finish_run(run_id, "failed", commit, metrics,
                                     "ValueError: amount is not a number: 'n/a'",
                                     f"case {failing}:\n{TRACEBACK}")
                else:
                    store.finish_run(run_id, "completed", commit, metrics)
                if (j + 1) % batch == 0:
                    statements += recorder.flush()
            statements += recorder.flush()
            store.engine = engine
            store.finish_sweep(sweep_id)
    store.close()
    return {"big": sweep_ids[0] if big else None, "sweeps": sweep_ids[1 if big else 0:],
            "statements": statements}


# -- measuring -------------------------------------------------------------------------


def _median_run(cmd: list[str], env: dict[str, str], repeat: int, slow: float) -> float:
    """Median wall time of `cmd` after a warm-up run (bytecode, page cache); a command whose
    warm-up took over `slow` seconds is not run again: that one time is returned."""
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    first = time.perf_counter() - t
    if first > slow:
        return first
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _in_process(db: Path, blobs: Path, sweeps: list[str], flags: list[str],
                repeat: int, slow: float) -> dict[str, float]:
    """cmd_compare's work in this process, its parts timed apart: the store's three queries
    (with decoding), compare.rows() (which runs them again), the output to a string."""
    from wtb_conf.cli.common import print_json
    from wtb_conf.results import compare, table

    cases = "--cases" in flags
    figures: dict[str, list[float]] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        store = open_store(str(db), blobs, readonly=True)
        t1 = time.perf_counter()
        store.compare_runs(sweeps)
        t2 = time.perf_counter()
        store.latest_evaluations(sweeps)
        t3 = time.perf_counter()
        if cases:
            store.compare_cases(sweeps)
        t4 = time.perf_counter()
        rows, note = compare.rows(store, sweeps, cases=cases)
        t5 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            if "--json" in flags:
                print_json(rows)
            elif "--csv" in flags:
                print(table.to_csv(rows), end="")
            else:
                table.print_rows(rows, "sweep " + ", ".join(s[:8] for s in sweeps), note)
        t6 = time.perf_counter()
        store.close()
        for name, v in (("open", t1 - t0), ("runs sql", t2 - t1), ("evals sql", t3 - t2),
                        ("cases sql", t4 - t3), ("rows()", t5 - t4), ("output", t6 - t5)):
            figures.setdefault(name, []).append(v)
        if t6 - t0 > slow:
            break
    med = {k: statistics.median(v) for k, v in figures.items()}
    med["rows"] = len(rows)
    return med


def profile(db: Path, blobs: Path, sweeps: list[str], flags: list[str]) -> None:
    from wtb_conf import cli

    argv = ["--db", str(db), "--blobs", str(blobs), "compare", *sweeps, *flags]
    prof = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()):
        prof.runcall(cli.main, argv)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=200, help="jobs per sweep")
    ap.add_argument("--big", type=int, default=10_000, help="jobs of the one big sweep (0: none)")
    ap.add_argument("--checkpoints", type=int, default=5, help="linked checkpoints per case")
    ap.add_argument("--batch", type=int, default=200, help="runs per build transaction")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slow", type=float, default=10.0,
                    help="a command slower than this (s) is timed once, not --repeat times")
    ap.add_argument("--store", metavar="DIR",
                    help="build the store in DIR and reuse it when run again with the same "
                         "shape (default: a temporary directory, removed at the end)")
    ap.add_argument("--profile", metavar="CASE",
                    help="print a cProfile of one case (e.g. 'all sweeps') and stop")
    args = ap.parse_args()

    shape = {k: getattr(args, k) for k in ("sweeps", "jobs", "big", "checkpoints")}
    tmp = tempfile.mkdtemp(prefix="compare-bench-")
    work = Path(args.store).resolve() if args.store else Path(tmp)
    db, blobs, meta = work / "wtb.db", work / "blobs", work / "bench.json"
    try:
        if meta.exists() and json.loads(meta.read_text())["shape"] == shape:
            built = json.loads(meta.read_text())
            print(f"store: reusing {db}")
        else:
            if meta.exists():  # ours, of another shape
                shutil.rmtree(work)
            elif work.exists() and any(work.iterdir()):
                ap.error(f"--store {work}: not empty and not a store of this benchmark")
            work.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            built = build(db, blobs, **shape, batch=args.batch)
            built["shape"], built["seconds"] = shape, time.perf_counter() - t
            meta.write_text(json.dumps(built))
            print(f"store: built in {built['seconds']:.1f} s ({built['statements']:,} "
                  f"statements of the Store API)")
        runs = args.sweeps * args.jobs + args.big
        print(f"store: {runs:,} runs ({args.big:,}-job sweep + {args.sweeps} sweeps x "
              f"{args.jobs} jobs), {db.stat().st_size / 1e6:.0f} MB")

        cases: dict[str, tuple[list[str], list[str]]] = {
            f"last ({args.jobs} jobs)": (["last"], []),
            "last --json": (["last"], ["--json"]),
            "last --csv": (["last"], ["--csv"]),
            "last --cases": (["last"], ["--cases"]),
            f"all sweeps ({args.sweeps * args.jobs:,})": (built["sweeps"], []),
            "all sweeps --json": (built["sweeps"], ["--json"]),
            "all sweeps --csv": (built["sweeps"], ["--csv"]),
            "all sweeps --cases": (built["sweeps"], ["--cases"]),
        }
        if built["big"]:
            cases |= {f"big sweep ({args.big:,})": ([built["big"]], []),
                      "big sweep --json": ([built["big"]], ["--json"]),
                      "big sweep --csv": ([built["big"]], ["--csv"])}
        if args.profile:
            name = next(n for n in cases if n.startswith(args.profile))
            refs, flags = cases[name]
            return profile(db, blobs, refs, flags)

        # bytecode written once (in a directory of ours) and then read, as for a user;
        # this machine's PYTHONDONTWRITEBYTECODE=1 would recompile wtb_conf every time
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        nocache = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        wtb = shutil.which("wtb", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                       f"{os.environ.get('PATH', '')}")
        timed = functools.partial(_median_run, repeat=args.repeat, slow=args.slow)
        py = [sys.executable]

        print(f"\nthe floor: interpreter and imports, median of {args.repeat} runs")
        for name, cmd, e in [("python -c pass", [*py, "-c", "pass"], env),
                             ("import wtb_conf.cli", [*py, "-c", "import wtb_conf.cli"], env),
                             ("  same, no bytecode cache", [*py, "-c", "import wtb_conf.cli"],
                              nocache),
                             *((f"import {m}", [*py, "-c", f"import {m}"], env) for m in (
                                 "sqlalchemy", "omegaconf", "yaml", "rich.console, rich.table"))]:
            print(f"{name:38}{timed(cmd, e):6.2f}s", flush=True)

        print(f"\n`compare`, median of {args.repeat} runs (* one run: slower than --slow); "
              f"ratio: python -m / {TARGET:.0f} s target;\nin-process: open, the three queries "
              "(+ decoding) alone, rows() (queries included), output; work = open + rows() + "
              "output")
        print(f"{'':24}{'rows':>6}{'python -m':>11}{'wtb':>9}{'ratio':>7}{'open':>8}"
              f"{'runs sql':>10}{'evals sql':>10}{'cases sql':>10}{'rows()':>9}{'output':>10}"
              f"{'work':>9}")
        for name, (refs, flags) in cases.items():
            argv = ["--db", str(db), "--blobs", str(blobs), "compare", *refs, *flags]
            one = timed([*py, "-m", "wtb_conf.cli", *argv], env)
            script = timed([wtb, *argv], env) if wtb else float("nan")
            m = _in_process(db, blobs, _last(db, blobs) if refs == ["last"] else refs, flags,
                            args.repeat, args.slow)
            work_s = m["open"] + m["rows()"] + m["output"]
            star = "*" if one > args.slow else " "
            ms = [f"{m[k] * 1e3:{w}.0f}ms" for k, w in (("open", 6), ("runs sql", 8),
                                                          ("evals sql", 8), ("cases sql", 8),
                                                          ("rows()", 7), ("output", 8))]
            print(f"{name:24}{m['rows']:6.0f}{one:9.2f}s{star}{script:7.2f}s{star}"
                  f"{one / TARGET:6.1f}x{''.join(ms)}{work_s:8.2f}s", flush=True)

        # The report of the same sweep: the issue bounds its size (5 MB for 200 runs). These
        # runs commit no files, so the per-run file lists are empty here.
        out = Path(tmp) / "report.html"
        seconds = timed([*py, "-m", "wtb_conf.cli", "--db", str(db), "--blobs", str(blobs),
                         "report", "last", "--out", str(out)], env)
        print(f"\n`wtb report last` ({args.jobs} jobs): {seconds:.2f}s, "
              f"{out.stat().st_size / 1e6:.2f} MB (bound: 5 MB)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _last(db: Path, blobs: Path) -> list[str]:
    with open_store(str(db), blobs, readonly=True) as store:
        return [store.last_sweep()]


if __name__ == "__main__":
    main()
