"""Launcher benchmark: Hydra's basic launcher, hydra-ray-launcher and wtb_ray, same app.

    python benchmarks/launcher_bench.py [--repeat 3]

Runs, in one go, (a) 12 trivial jobs and (b) 16 jobs of ~1 s of CPU each, as whole
`python app.py -m ...` commands (Ray's start and stop included: that is what a user waits
for), then samples the total RSS of the Ray processes during a 2-actor wtb_ray sweep.
hydra-ray-launcher pins cloudpickle<3, so it gets a virtualenv of its own, made here on first
use under benchmarks/.venv-hydra-ray (with this environment's Ray and Hydra versions).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = HERE / "apps" / "bench_app.py"
HYDRA_RAY_VENV = HERE / ".venv-hydra-ray"
SWEEPS = {
    "a: 12 trivial jobs": ["+i=range(0,12)", "+work=0"],
    "b: 16 x 1 s CPU": ["+i=range(0,16)", "+work=1.0"],
}


def hydra_ray_python() -> str:
    python = HYDRA_RAY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(HYDRA_RAY_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "hydra-ray-launcher==1.2.2",
             f"ray[default]=={version('ray')}", f"hydra-core=={version('hydra-core')}"],
            check=True,
        )
    return str(python)


LAUNCHERS = {
    "basic": (sys.executable, ["hydra/launcher=basic"]),
    "hydra-ray-launcher": (None, ["hydra/launcher=ray"]),
    "wtb_ray": (sys.executable, ["hydra/launcher=wtb_ray", "hydra.launcher.progress=false"]),
    # the iterative-work path: a cluster left running (`ray start --head`), joined by address
    "wtb_ray joined": (sys.executable, ["hydra/launcher=wtb_ray", "hydra.launcher.progress=false"]),
}


TOKEN = secrets.token_hex(16)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray
    # Ray 2.60's token auth, without writing ~/.ray/auth_token
    e.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    return e


HOLD_RAY_HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


def start_head() -> tuple[subprocess.Popen, str]:
    """A running cluster, like `ray start --head`, held by a process of ours so that stopping
    it stops this cluster and no other."""
    head = subprocess.Popen([sys.executable, "-c", HOLD_RAY_HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env())
    return head, head.stdout.readline().strip()


def stop_head(head: subprocess.Popen) -> None:
    head.stdin.close()
    head.wait(timeout=120)


def run_sweep(python: str, launcher: list[str], sweep: list[str], workdir: Path) -> float:
    cmd = [python, str(APP), "-m", *launcher, *sweep, f"hydra.sweep.dir={workdir}/s",
           "hydra/job_logging=disabled"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def ray_rss() -> int:
    """Total RSS in bytes of this machine's Ray processes (raylet, GCS, workers, ...)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"ray" not in cmdline or b"launcher_bench" in cmdline:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def peak_memory(workdir: Path) -> int:
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, ray_rss())
            time.sleep(0.1)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        run_sweep(sys.executable, [*LAUNCHERS["wtb_ray"][1], "hydra.launcher.num_actors=2"],
                  SWEEPS["b: 16 x 1 s CPU"], workdir)
    finally:
        done.set()
        thread.join()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    python = {name: p for name, (p, _) in LAUNCHERS.items()}
    python["hydra-ray-launcher"] = hydra_ray_python()

    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for sweep_name, sweep in SWEEPS.items():
                for name, (_, overrides) in LAUNCHERS.items():
                    workdir = Path(tmp) / f"{r}-{name}-{sweep_name[0]}".replace(" ", "_")
                    workdir.mkdir()
                    if name == "wtb_ray joined":
                        head, address = start_head()
                        overrides = [*overrides, f"hydra.launcher.address={address}"]
                    try:
                        t = run_sweep(python[name], overrides, sweep, workdir)
                    finally:
                        if name == "wtb_ray joined":
                            stop_head(head)
                    times.setdefault((sweep_name, name), []).append(t)
                    print(f"  run {r + 1}: {sweep_name:18} {name:18} {t:6.2f} s", flush=True)
        mem_dir = Path(tmp) / "memory"
        mem_dir.mkdir()
        peak = peak_memory(mem_dir)

    print(f"\nmedian wall time of {args.repeat} runs (Ray {version('ray')}, {os.cpu_count()} CPUs)")
    print(f"{'':20}{'basic':>10}{'hydra-ray':>11}{'wtb_ray':>10}{'/basic':>9}{'/hydra-ray':>12}"
          f"{'joined':>10}{'/basic':>9}")
    for sweep_name in SWEEPS:
        m = {n: statistics.median(times[(sweep_name, n)]) for n in LAUNCHERS}
        print(f"{sweep_name:20}{m['basic']:9.2f}s{m['hydra-ray-launcher']:10.2f}s"
              f"{m['wtb_ray']:9.2f}s{m['wtb_ray'] / m['basic']:8.2f}x"
              f"{m['wtb_ray'] / m['hydra-ray-launcher']:11.2f}x"
              f"{m['wtb_ray joined']:9.2f}s{m['wtb_ray joined'] / m['basic']:8.2f}x")
    print(f"peak RSS of Ray processes, 2-actor wtb_ray sweep (b): {peak / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
