"""Shared fixtures. The demo sweep runs once per session, for real, in a copy of the project."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
def demo(tmp_path_factory) -> Path:
    """A project directory in which `python -m wtb_conf -m +experiment=demo` has run."""
    project = copy_project(tmp_path_factory.mktemp("demo"))
    proc = run_bench(project, "-m", "+experiment=demo")
    (project / "sweep.out").write_text(proc.stdout + proc.stderr)
    return project
