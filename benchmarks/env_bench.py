"""venv_manager benchmark: cache-hit latency, cold creation against raw uv, single-flight.

    python benchmarks/env_bench.py [--calls 1000] [--packages "tabulate==0.9.0 six==1.16.0"]

In one run, against a real server on loopback (gRPC, no token):
1. EnsureEnv of an existing env, --calls times: p50 / p99 latency.
2. Cold creation of a spec (uv's download cache warm, the env itself new) through the
   manager, against the same spec built by hand with `uv venv` + `uv pip install
   --compile-bytecode` in the same run: median of --repeat each, and the ratio.
3. 16 concurrent EnsureEnv asks for one new spec: how many builds the audit db records.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from venv_manager.proto import venv_manager_pb2 as pb  # noqa: E402
from venv_manager.proto import venv_manager_pb2_grpc as pb_grpc  # noqa: E402

PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def raw_uv(packages: list[str], dest: Path) -> float:
    t = time.perf_counter()
    subprocess.run([uv(), "venv", "-q", "--relocatable", "--python", PYTHON, str(dest)],
                   check=True)
    subprocess.run([uv(), "pip", "install", "-q", "--python", str(dest / "bin" / "python"),
                    "--compile-bytecode", *packages], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--packages", default="tabulate==0.9.0 six==1.16.0")
    args = ap.parse_args()
    packages = args.packages.split()

    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [sys.executable, "-m", "venv_manager", "serve", "--grpc-port", "0",
             "--rest-port", "-1", "--data", f"{tmp}/vm", "--no-token"], stdout=subprocess.PIPE,
            text=True)
        address = server.stdout.readline().split("grpc=")[1].split()[0]
        stub = pb_grpc.VenvManagerStub(grpc.insecure_channel(address))
        try:
            # warm uv's download cache, so cold creation measures building, not downloading
            raw_uv(packages, Path(tmp) / "warm")
            spec = pb.EnvSpec(python=PYTHON, packages=packages)
            stub.EnsureEnv(spec, timeout=600)
            hits = []
            for _ in range(args.calls):
                t = time.perf_counter()
                stub.EnsureEnv(spec)
                hits.append(time.perf_counter() - t)
            hits.sort()

            cold, raw = [], []
            for i in range(args.repeat):
                # a spec no one has built yet: the same packages, plus a constraint that
                # changes the env's identity and nothing that gets installed
                fresh = pb.EnvSpec(python=PYTHON, packages=packages, constraints=[f"pip>={i}"])
                t = time.perf_counter()
                stub.EnsureEnv(fresh, timeout=600)
                cold.append(time.perf_counter() - t)
                raw.append(raw_uv(packages, Path(tmp) / f"raw{i}"))

            single = pb.EnvSpec(python=PYTHON, packages=packages, constraints=["setuptools>=0"])
            threads = [threading.Thread(target=lambda: stub.EnsureEnv(single, timeout=600))
                       for _ in range(16)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            env_id = stub.EnsureEnv(single).env_id
            ops = stub.History(pb.HistoryRequest(env_id=env_id, page_size=100)).operations
            builds = [o.status for o in ops].count("built")
        finally:
            server.terminate()
            server.wait(timeout=30)

    p50 = hits[len(hits) // 2] * 1e3
    p99 = hits[int(len(hits) * 0.99) - 1] * 1e3
    print(f"EnsureEnv cache hit, {args.calls} calls: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    c, r = statistics.median(cold), statistics.median(raw)
    print(f"cold creation of {' '.join(packages)} (median of {args.repeat}): manager "
          f"{c:.2f} s, raw uv venv + pip install --compile-bytecode {r:.2f} s, ratio {c / r:.2f}x")
    print(f"16 concurrent EnsureEnv for one new spec: {builds} build(s)")


if __name__ == "__main__":
    main()
