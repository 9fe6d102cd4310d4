"""Shared prefixes benchmark: node executions and wall time with and without prefix sharing.

    python benchmarks/prefix_bench.py [--work 1.0] [--variants 4] [--nodes 6]

A generated project: a chain of --nodes nodes (each sleeps --work seconds and writes a file),
--variants variants that differ only in the last node's parameter, 2 input cases. The same
sweep (`python -m wtb_conf -m workflow=chain variant=v1,...`) runs on wtb_ray with 2 actors,
once as shipped and once with `share_prefixes=false`, each in a fresh copy of the project
(so the job cache plays no part), both joining one Ray head started for the benchmark (so
Ray's start and stop are not in the figures). Wall time is the whole command; the jobs'
span is first job start to last job end as the store recorded them, which leaves out the
actors' start (several seconds here, see docs/benchmarks.md). Node executions are counted
twice: by the nodes themselves (a line per call in executions.log) and from the store
(`wtb show --json`, `executed`). The final commits of the two sweeps must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HOLD_RAY_HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""

NODES_PY = '''
import time
from datetime import datetime
from pathlib import Path

import wtb_conf


def step(state, name, work_s, mode="a"):
    time.sleep(work_s)
    with open(wtb_conf.launch_dir() / "executions.log", "a") as f:
        f.write(name + "\\n")
    Path(f"{name}.txt").write_text(f"{name} {mode} {state['value']}\\n")
    return {"value": state["value"] * 2 + len(mode), "log": [name]}
'''


def make_project(root: Path, nodes: int, variants: int, work: float) -> Path:
    names = [f"n{i}" for i in range(1, nodes + 1)]
    wf = ["name: chain", "state:", "  value: int", "  log: {type: list, reducer: append}",
          "nodes:"]
    wf += [f"  {n}: {{_target_: chain_nodes.step, name: {n}, work_s: {work}}}" for n in names]
    wf += ["edges:", f"  - [START, {names[0]}]"]
    wf += [f"  - [{a}, {b}]" for a, b in zip(names, names[1:], strict=False)]
    wf += [f"  - [{names[-1]}, END]", "cases:", "  one: {value: 1}", "  two: {value: 2}"]
    (root / "conf/workflow").mkdir(parents=True)
    (root / "conf/workflow/chain.yaml").write_text("\n".join(wf) + "\n")
    (root / "conf/variant").mkdir()
    for v in range(1, variants + 1):
        (root / f"conf/variant/v{v}.yaml").write_text(
            f"# @package workflow\nnodes:\n  {names[-1]}: {{mode: mode{v}}}\n")
    (root / "chain_nodes.py").write_text(NODES_PY)
    return root


def sweep(project: Path, variants: int, *extra: str) -> dict:
    argv = [sys.executable, "-m", "wtb_conf", "-m", "workflow=chain",
            "variant=" + ",".join(f"v{v}" for v in range(1, variants + 1)),
            "hydra.launcher.num_actors=2", "hydra.launcher.address=auto", *extra]
    t = time.perf_counter()
    subprocess.run(argv, cwd=project, check=True, capture_output=True)
    wall = time.perf_counter() - t
    wtb = [sys.executable, "-m", "wtb_conf.cli"]
    runs = json.loads(subprocess.run([*wtb, "runs", "--json"], cwd=project, check=True,
                                     capture_output=True, text=True).stdout)
    executed: dict[str, int] = {}
    for run in runs:
        shown = json.loads(subprocess.run([*wtb, "show", run["run_id"], "--json"], cwd=project,
                                          check=True, capture_output=True, text=True).stdout)
        for case in shown["cases"]:
            executed[case["case"]] = executed.get(case["case"], 0) + len(case["executed"])
    calls = len((project / "executions.log").read_text().split())
    starts = [datetime.fromisoformat(r["started_at"]) for r in runs]
    ends = [datetime.fromisoformat(r["finished_at"]) for r in runs]
    span = (max(ends) - min(starts)).total_seconds()
    return {"wall": wall, "span": span, "executed": executed, "calls": calls,
            "commits": sorted((r["job_num"], r["commit"]) for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=float, default=1.0, help="seconds each node sleeps")
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=6)
    args = ap.parse_args()
    # Token auth as Ray ships it, with the token in the environment rather than ~/.ray.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    head = subprocess.Popen([sys.executable, "-c", HOLD_RAY_HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    os.environ["RAY_ADDRESS"] = head.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = make_project(Path(tmp) / "base", args.nodes, args.variants, args.work)
            results = {}
            for label, extra in (("shared", ()), ("unshared", ("share_prefixes=false",))):
                project = Path(tmp) / label
                shutil.copytree(base, project)
                results[label] = sweep(project, args.variants, *extra)
    finally:
        head.stdin.close()
        head.wait(timeout=120)
    shared, unshared = results["shared"], results["unshared"]
    n, v = args.nodes, args.variants
    print(f"{n}-node chain, {v} variants differing in the last node, 2 cases, "
          f"{args.work:.2f} s per node, wtb_ray with 2 actors")
    print(f"{'':<10}{'executions/case':>17}{'node calls':>12}{'wall s':>9}{'jobs span s':>13}")
    for label, r in results.items():
        per_case = "/".join(str(x) for x in r["executed"].values())
        print(f"{label:<10}{per_case:>17}{r['calls']:>12}{r['wall']:>9.2f}{r['span']:>13.2f}")
    print(f"target per case: N + V - 1 = {n + v - 1} (without sharing: N * V = {n * v})")
    print(f"executions ratio unshared/shared: {unshared['calls'] / shared['calls']:.2f}x, "
          f"wall time ratio: {unshared['wall'] / shared['wall']:.2f}x, "
          f"jobs span ratio: {unshared['span'] / shared['span']:.2f}x")
    same = shared["commits"] == unshared["commits"]
    print(f"final commits equal with and without sharing: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
