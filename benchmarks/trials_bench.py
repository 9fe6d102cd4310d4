"""Trials benchmark (issue #20): the statistics at scale, and what trials cost a sweep.

    python benchmarks/trials_bench.py [--jobs 200] [--cases 10] [--trials 10] [--repeat 3]
                                      [--store DIR] [--sweep-trials 1,5,10]

1. A store with one sweep of --jobs jobs x --cases cases x --trials trials (200 x 10 x 10:
   20,000 case-trials), each thread with 2 checkpoints, 2 metrics and 2 scores (a number and
   a pass/fail), built with the real Store API through compare_bench's statement recorder.
   Then, as a user runs them (a subprocess each, median of --repeat after a warm-up):
   `wtb compare` (per-job statistics, the best-job test), `wtb compare --baseline 0` (a
   paired test per job and number, Holm over the grid), `--json`, and `wtb report` (time and
   size). Side by side: the same store's `wtb compare` with the statistics' time alone.
2. The sweep: the shipped support agent (+experiment=support_agent's workflow, one prompt),
   run for real with each of --sweep-trials (share_prefixes=false, so every trial runs), and
   the time per case-trial: trials cost N x one trial when the per-trial figure stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from compare_bench import _building, _Clock, _digest, _median_run, _Recorder

from wtb_conf.store import open_store

ROOT = Path(__file__).resolve().parent.parent
COMPARE = {"objective": "acc", "mode": "max"}


def build(db: Path, blobs: Path, jobs: int, cases: int, trials: int, seed: int = 0) -> str:
    """One sweep of `jobs` jobs; job j's accuracy is 0.6 + 0.001 j, so neighbours are close
    (ties) and far jobs are not."""
    from wtb_conf.job.scoring import summarize

    rng = random.Random(seed)
    clock = _Clock()
    store = open_store(str(db), blobs)
    out = db.parent / "out"
    (out / "c0").mkdir(parents=True, exist_ok=True)
    (out / "c0" / "answer.md").write_text("an answer\n")
    commit = store.commit_dir(out, message="final")
    engine, recorder = store.engine, _Recorder(store.engine)
    with _building(clock):
        store.engine = recorder
        sweep_id = store.create_sweep(["-m", "+experiment=bench"], "/proj/multirun/x")
        for j in range(jobs):
            params = [f"variant=v{j % 20}", f"workflow.nodes.answer.skill={j // 20}",
                      "+experiment=bench"]
            run_id = store.start_run(sweep_id, j, params, "agent", "{}", _digest(j),
                                     f"/proj/multirun/x/{j}", identity={"job_key": _digest(j)},
                                     launch_dir="/proj")
            scored, statuses, metrics = {}, {}, {}
            for c in range(cases):
                for t in range(trials):
                    key = f"c{c}/{t}"
                    thread_id = f"{run_id}/{key}"
                    store.start_thread(run_id, thread_id, key)
                    for step in (-1, 0):
                        store.link_checkpoint(run_id, thread_id, "", _digest(thread_id, step)
                                              [:32], step, "loop", [] if step < 0 else
                                              ["answer"], commit, ["answer"][:step + 1])
                    clock.now += timedelta(milliseconds=rng.uniform(50, 200))
                    store.finish_thread(thread_id, "completed", {"words": 5}, commit)
                    statuses[key] = "completed"
                    acc = min(1.0, max(0.0, rng.gauss(0.6 + 0.001 * j, 0.1)))
                    scored[key] = {"scores": {"acc": acc, "ok": rng.random() < acc},
                                   "errors": {}}
                    metrics[f"{key}/words"] = rng.randint(3, 30)
                    metrics[f"{key}/latency_s"] = rng.uniform(0.5, 3.0)
            metrics["words"] = statistics.mean(v for k, v in metrics.items() if k.endswith(
                "/words"))
            store.add_evaluation(run_id, "run", _digest("eval"), COMPARE, scored,
                                 summarize(scored, statuses))
            store.finish_run(run_id, "completed", commit, metrics)
            if (j + 1) % 20 == 0:
                recorder.flush()
        recorder.flush()
        store.engine = engine
        store.finish_sweep(sweep_id)
    store.close()
    return sweep_id


def stats_alone(db: Path, blobs: Path, sweep: str) -> dict[str, float]:
    """In this process: compare.rows() (queries, values, statistics, best-job test), and the
    baseline's paired tests over the grid, timed apart."""
    from wtb_conf.results import compare

    store = open_store(str(db), blobs, readonly=True)
    import scipy.stats  # noqa: F401  (its import is timed in the subprocess figures)

    t0 = time.perf_counter()
    rows, _ = compare.rows(store, [sweep])
    t1 = time.perf_counter()
    compare.add_baseline(rows, rows[:1], by_params=False)
    t2 = time.perf_counter()
    store.close()
    tests = sum(len(r.get("vs_baseline", {})) for r in rows)
    return {"rows()": t1 - t0, "baseline tests": t2 - t1, "tests": tests}


def sweep_cost(trials_list: list[int], repeat: int) -> list[tuple[int, float, float]]:
    """(trials, seconds of the job's run, seconds per case-trial) for one real job each."""
    out = []
    with tempfile.TemporaryDirectory(prefix="wtb-trials-") as tmp:
        project = Path(tmp)
        for name in ("conf", "experiments"):
            shutil.copytree(ROOT / name, project / name)
        for trials in trials_list:
            times = []
            for _ in range(repeat):
                subprocess.run([sys.executable, "-m", "wtb_conf", "-m", "workflow=support_agent",
                                "variant=agent_cite", f"trials={trials}", "rerun=true",
                                "share_prefixes=false", "hydra/launcher=basic"], cwd=project,
                               check=True, capture_output=True)
                with open_store(str(project / "data/wtb.db"), project / "data/blobs",
                                readonly=True) as store:
                    run = store.runs()[-1]
                started, finished = (run["started_at"], run["finished_at"])
                from datetime import datetime
                times.append((datetime.fromisoformat(finished)
                              - datetime.fromisoformat(started)).total_seconds())
            t = statistics.median(times)
            out.append((trials, t, t / (5 * trials)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--store", help="keep the store here (default: a temp dir)")
    ap.add_argument("--sweep-trials", default="1,5,10")
    args = ap.parse_args()
    root = Path(args.store or tempfile.mkdtemp(prefix="wtb-trials-bench-"))
    db, blobs = root / "wtb.db", root / "blobs"
    if not db.exists():
        t = time.perf_counter()
        sweep = build(db, blobs, args.jobs, args.cases, args.trials)
        print(f"built {args.jobs} jobs x {args.cases} cases x {args.trials} trials in "
              f"{time.perf_counter() - t:.0f} s: {db} ({db.stat().st_size / 1e6:.0f} MB)")
    else:
        with open_store(str(db), blobs, readonly=True) as store:
            sweep = store.last_sweep()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": ""}
    wtb = [sys.executable, "-m", "wtb_conf.cli", "--db", str(db), "--blobs", str(blobs)]
    print(f"\n{'command':48} {'median s':>9}")
    for label, extra in (("wtb compare", []), ("wtb compare --baseline 0", ["--baseline", "0"]),
                         ("wtb compare --json", ["--json"]),
                         ("wtb compare --baseline 0 --json", ["--baseline", "0", "--json"])):
        seconds = _median_run([*wtb, "compare", sweep, *extra], env, args.repeat, 30)
        print(f"{label:48} {seconds:9.2f}")
    floor = _median_run([sys.executable, "-c", "import wtb_conf.cli, scipy.stats"], env,
                        args.repeat, 30)
    print(f"{'the floor: python + wtb + scipy.stats imports':48} {floor:9.2f}")
    report = root / "report.html"
    t = _median_run([*wtb, "report", sweep, "--out", str(report)], env, 1, 60)
    print(f"{'wtb report':48} {t:9.2f}   {report.stat().st_size / 1e6:.1f} MB")
    alone = stats_alone(db, blobs, sweep)
    print(f"\nin process: compare.rows() {alone['rows()']:.2f} s; the baseline's "
          f"{alone['tests']:.0f} paired tests and Holm {alone['baseline tests']:.2f} s")
    print(f"\n{'trials':>6} {'job s':>7} {'s per case-trial':>17} {'vs trials=1':>12}")
    rows = sweep_cost([int(x) for x in args.sweep_trials.split(",")], args.repeat)
    one = rows[0][2]
    for trials, seconds, per in rows:
        print(f"{trials:>6} {seconds:7.2f} {per:17.3f} {per / one:11.2f}x")
    print(json.dumps({"sweep": sweep, "store": str(root)}))


if __name__ == "__main__":
    main()
