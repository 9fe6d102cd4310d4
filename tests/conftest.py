"""Shared fixtures. The demo sweep runs once per session, for real, in a copy of the project."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOLD_RAY_HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One Ray head for the whole test session; every launch (in-process or in a subprocess)
    joins it through RAY_ADDRESS instead of paying Ray's start and stop each time.

    Ray 2.60 turns token auth on and writes ~/.ray/auth_token on first start: the tests keep
    token auth but hand Ray a token through the environment, so nothing lands in $HOME."""
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    # A process of our own holds the head, so teardown stops this cluster and no other
    # (`ray stop` would stop every Ray on the machine).
    head = subprocess.Popen(
        [sys.executable, "-c", HOLD_RAY_HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    address = head.stdout.readline().strip()
    if not address:
        raise RuntimeError("the test session's Ray head did not start")
    os.environ["RAY_ADDRESS"] = address
    yield address
    import ray

    if ray.is_initialized():
        ray.shutdown()
    head.stdin.close()  # the holder shuts Ray down and exits
    head.wait(timeout=120)


def run_bench(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m wtb_conf ARGS` in cwd, the way a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "wtb_conf", *args], cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_project(dest: Path) -> Path:
    for name in ("conf", "experiments"):
        shutil.copytree(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def demo(tmp_path_factory, ray_cluster) -> Path:
    """A project directory in which `python -m wtb_conf -m +experiment=demo` has run."""
    project = copy_project(tmp_path_factory.mktemp("demo"))
    proc = run_bench(project, "-m", "+experiment=demo")
    (project / "sweep.out").write_text(proc.stdout + proc.stderr)
    return project
