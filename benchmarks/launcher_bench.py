"""Launcher benchmark: wtb_ray against Hydra's basic launcher and hydra-ray-launcher (issue #10).

    python benchmarks/launcher_bench.py [--repeat 3] [--basic-sleep-runs 1]

Each figure is a whole command, as a user waits for it (interpreter, Ray's start and stop);
the runs of a repeat are interleaved; medians are printed with their ratio to each target:

1. the wtb_conf demo (`python -m wtb_conf -m +experiment=demo`, 4 jobs) in a fresh copy of
   conf/ and experiments/, then again in the same project (every job a cache hit): the default
   `hydra/launcher=wtb` against `hydra/launcher=basic` (<= 1.5x fresh, <= 1.2x cached);
2. benchmarks/apps/bench_app.py, 12 trivial jobs: wtb_ray against hydra-ray-launcher (<= 0.5x);
3. the same app, 16 jobs of 1 s of CPU: wtb_ray against basic (<= 0.65x);
4. the same app, 24 jobs sleeping 2 s (an LLM call, say): wtb_ray with num_cpus=0.1 against
   basic (<= 0.2x); basic takes ~50 s, so it runs --basic-sleep-runs times (default 1);
5. peak memory with num_actors=2 during (3) and the demo: the default path (driver and forked
   local workers) and local_workers=false (driver, its Ray cluster, actors); <= 1.2 GB.

Informative columns: local_workers=false (every job on an actor of a local Ray the command
starts), "joined" (wtb_ray joining a Ray head started outside the timed command) and "floor"
(the same work in a bare fork pool of as many processes: what the machine gives right now).
A command's processes, Ray's included, carry a marker in their environment: memory is summed
over them, and after each command the script checks that none is left running (and kills
any). hydra-ray-launcher pins cloudpickle<3: it gets a virtualenv made here on first use
(benchmarks/.venv-hydra-ray, this environment's Ray and Hydra). Ray runs with
RAY_AUTH_MODE=token and a token in the environment: nothing is written to $HOME.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APP = HERE / "apps" / "bench_app.py"
HYDRA_RAY_VENV = HERE / ".venv-hydra-ray"
TOKEN = secrets.token_hex(16)
MARK = "WTB_LAUNCHER_BENCH"  # in every command's environment: which processes are ours

WTB = ["hydra/launcher=wtb_ray", "hydra.launcher.progress=false"]
NO_LOCAL = [*WTB, "hydra.launcher.local_workers=false"]
APP_COLUMNS = {  # column: (python, launcher overrides); None: the hydra-ray-launcher venv
    "basic": (sys.executable, ["hydra/launcher=basic"]),
    "hydra-ray": (None, ["hydra/launcher=ray"]),
    "wtb": (sys.executable, WTB),
    "local_workers=false": (sys.executable, NO_LOCAL),
    "joined": (sys.executable, WTB),  # + hydra.launcher.address of a running head
}
SWEEPS = {  # row: (sweep overrides, columns it runs)
    "12 trivial jobs": (["+i=range(0,12)"], list(APP_COLUMNS)),
    "16 x 1 s CPU": (["+i=range(0,16)", "+work=1.0"], list(APP_COLUMNS)),
    "24 x 2 s sleep": (["+i=range(0,24)", "+sleep=2"], ["basic", "wtb"]),
}
SLEEP_WTB = ["hydra.launcher.num_cpus=0.1"]  # 2 CPUs / 0.1: 20 jobs at once
DEMO = {"basic": ["hydra/launcher=basic"], "wtb": [],
        "local_workers=false": ["hydra.launcher.local_workers=false"]}
TARGETS = {  # row: (column compared with wtb, bound on wtb / it)
    "demo, fresh project": ("basic", 1.5),
    "demo, cached re-run": ("basic", 1.2),
    "12 trivial jobs": ("hydra-ray", 0.5),
    "16 x 1 s CPU": ("basic", 0.65),
    "24 x 2 s sleep": ("basic", 0.2),
}
MEMORY_TARGET = 1.2e9
DIRS = itertools.count(1)
leftovers: list[str] = []  # processes of ours found running after their command ended


def hydra_ray_python() -> str:
    python = HYDRA_RAY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(HYDRA_RAY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "hydra-ray-launcher==1.2.2",
                        f"ray[default]=={version('ray')}", f"hydra-core=={version('hydra-core')}"],
                       check=True)
    return str(python)


def env(mark: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray
    # Ray 2.60's token auth, without writing ~/.ray/auth_token
    e.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN, **{MARK: mark})
    return e


def ours(mark: str | None = None) -> dict[int, str]:
    """pid -> command line of the processes carrying `mark` (any of this script's: None)."""
    needle = f"{MARK}={mark or ''}".encode()
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if any(v.startswith(needle) if mark is None else v == needle for v in environ):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                found[int(pid)] = cmd.decode(errors="replace").strip()[:120]
        except OSError:
            continue
    return found


def check_left(what: str, grace_s: float = 5.0) -> None:
    """Report (and kill) any process of ours still running `grace_s` after its command."""
    end = time.monotonic() + grace_s
    while (left := ours()) and time.monotonic() < end:
        time.sleep(0.1)
    for pid, cmd in left.items():
        leftovers.append(f"after {what}: pid {pid} {cmd}")
        print(f"  !! still running after {what}: pid {pid} {cmd}", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


HOLD_RAY_HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def ray_head(mark: str) -> Iterator[str]:
    """A running cluster, like `ray start --head`, held by a process of ours so that stopping
    it stops this cluster and no other."""
    head = subprocess.Popen([sys.executable, "-c", HOLD_RAY_HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env(mark))
    try:
        address = head.stdout.readline().strip()
        if not address:
            raise SystemExit(f"the Ray head did not start (exit {head.wait()})")
        yield address
    finally:
        head.stdin.close()
        head.wait(timeout=120)


FLOOR = """
import multiprocessing, sys, time
procs, jobs, work, sleep = map(float, sys.argv[1:])
def job(_):
    end = time.process_time() + work  # the app's loop, without Hydra
    while time.process_time() < end:
        pass
    time.sleep(sleep)
with multiprocessing.get_context("fork").Pool(int(procs)) as pool:
    pool.map(job, range(int(jobs)), chunksize=1)
"""
FLOORS = {"16 x 1 s CPU": ["2", "16", "1", "0"], "24 x 2 s sleep": ["20", "24", "0", "2"]}


def fresh(tmp: str, kind: str, demo: bool = False) -> Path:
    """A new directory for one command; its name is the command's marker."""
    path = Path(tmp) / f"{kind}-{next(DIRS)}"
    path.mkdir()
    for d in ("conf", "experiments") if demo else ():
        shutil.copytree(ROOT / d, path / d)
    return path


def timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env(cwd.name), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def app_cmd(python: str, launcher: list[str], sweep: list[str], workdir: Path) -> list[str]:
    return [python, str(APP), "-m", *launcher, *sweep, f"hydra.sweep.dir={workdir}/s",
            "hydra/job_logging=disabled"]


def demo_cmd(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "wtb_conf", "-m", "+experiment=demo", *overrides]


def memory(mark: str) -> tuple[int, int, int]:
    """Total RSS and PSS in bytes, and how many processes, of those carrying `mark`."""
    rss = pss = 0
    pids = ours(mark)
    for pid in pids:
        try:
            fields = dict(line.split(":", 1) for line in
                          Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
            rss += int(fields["Rss"].split()[0]) * 1024
            pss += int(fields["Pss"].split()[0]) * 1024
        except OSError:
            continue
    return rss, pss, len(pids)


def peak_memory(cmd: list[str], cwd: Path) -> tuple[int, int, int]:
    """Peak total RSS, peak total PSS and most processes during `cmd`, sampled every 0.2 s."""
    peak, done = [0, 0, 0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[:] = [max(a, b) for a, b in zip(peak, memory(cwd.name), strict=True)]
            time.sleep(0.2)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        timed(cmd, cwd)
    finally:
        done.set()
        thread.join()
    check_left(f"memory: {' '.join(cmd[1:])}")
    return peak[0], peak[1], peak[2]


def run_app(tmp: str, row: str, column: str, python: str | None) -> float:
    sweep = SWEEPS[row][0]
    workdir = fresh(tmp, "app")
    if column == "floor":
        return timed([sys.executable, "-c", FLOOR, *FLOORS[row]], workdir)
    launcher = APP_COLUMNS[column][1]
    if row == "24 x 2 s sleep" and column == "wtb":
        launcher = [*launcher, *SLEEP_WTB]
    with ray_head(workdir.name) if column == "joined" else contextlib.nullcontext() as address:
        join = [f"hydra.launcher.address={address}"] if address else []
        return timed(app_cmd(python, [*launcher, *join], sweep, workdir), workdir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--basic-sleep-runs", type=int, default=1,
                    help="runs of basic on the 24 x 2 s sleep sweep (~50 s each)")
    args = ap.parse_args()
    python = {name: p or hydra_ray_python() for name, (p, _) in APP_COLUMNS.items()}
    if left := ours():
        raise SystemExit(f"processes of an earlier run are still up: {left}")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    times: dict[tuple[str, str], list[float]] = {}

    def record(row: str, column: str, t: float, r: int) -> None:
        times.setdefault((row, column), []).append(t)
        print(f"  run {r + 1}: {row:20} {column:20} {t:6.2f} s   "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        check_left(f"{row}, {column}")

    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for column, overrides in DEMO.items():
                project = fresh(tmp, "demo", demo=True)
                for row in ("demo, fresh project", "demo, cached re-run"):
                    record(row, column, timed(demo_cmd(overrides), project), r)
            for row, (_, columns) in SWEEPS.items():
                for column in [*columns, *(["floor"] if row in FLOORS else [])]:
                    if row == "24 x 2 s sleep" and column == "basic" \
                            and r >= args.basic_sleep_runs:
                        continue
                    record(row, column, run_app(tmp, row, column, python.get(column)), r)
        mem = {}
        for column in ("wtb", "local_workers=false"):
            two = [*APP_COLUMNS[column][1], "hydra.launcher.num_actors=2"]
            workdir = fresh(tmp, "memory")
            mem[f"16 x 1 s CPU, {column}"] = peak_memory(
                app_cmd(sys.executable, two, SWEEPS["16 x 1 s CPU"][0], workdir), workdir)
            mem[f"demo, {column}"] = peak_memory(
                demo_cmd([*DEMO[column], "hydra.launcher.num_actors=2"]),
                fresh(tmp, "memory", demo=True))

    print(f"\nmedian wall time (s) of {args.repeat} runs; Ray {version('ray')}, "
          f"{os.cpu_count()} CPUs, load average at end {os.getloadavg()}")
    columns = ["basic", "hydra-ray", "wtb", "local_workers=false", "joined", "floor"]
    print(f"{'':22}" + "".join(f"{c.replace('local_workers=', 'lw='):>14}" for c in columns)
          + f"{'wtb / ref':>11}  target")
    for row, (ref, bound) in TARGETS.items():
        cells = []
        for c in columns:
            ts = times.get((row, c))
            runs = f" ({len(ts)} run{'s' * (len(ts) > 1)})" if ts and len(ts) != args.repeat else ""
            cells.append(f"{statistics.median(ts):.2f}{runs}" if ts else "-")
        ratio = statistics.median(times[(row, "wtb")]) / statistics.median(times[(row, ref)])
        verdict = "met" if ratio <= bound else "MISSED"
        each = " / ".join(f"{t / u:.2f}" for t, u in
                          zip(times[(row, "wtb")], times[(row, ref)], strict=False))
        print(f"{row:22}" + "".join(f"{c:>14}" for c in cells)
              + f"{ratio:10.2f}x  <= {bound}x {ref}: {verdict} (each run: {each})")
    print("wtb: hydra/launcher=wtb (demo) or wtb_ray, local workers (sleep: num_cpus=0.1); "
          "lw=false: local_workers=false; floor: a bare fork pool, no Hydra")
    print("\npeak memory, hydra.launcher.num_actors=2 (target: total RSS "
          f"<= {MEMORY_TARGET / 1e9:.1f} GB; PSS counts shared pages once):")
    for name, (rss, pss, procs) in mem.items():
        verdict = "met" if rss <= MEMORY_TARGET else "MISSED"
        print(f"  {name:36} RSS {rss / 1e9:5.2f} GB ({verdict})   PSS {pss / 1e9:5.2f} GB   "
              f"{procs} processes")
    print(f"\nprocesses left running after their command: {len(leftovers) or 'none'}")
    for line in leftovers:
        print(f"  {line}")


if __name__ == "__main__":
    main()
