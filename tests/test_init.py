"""`wtb init`: a project a new user can sweep at once, and a store that does not mix with
their inputs unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_bench

WTB = [sys.executable, "-m", "wtb_conf.cli"]


def wtb(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WTB, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_init_makes_a_project_that_sweeps(tmp_path):
    proc = wtb(tmp_path, "init", "hello")
    assert proc.returncode == 0, proc.stderr
    project = tmp_path / "hello"
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == [
        "conf/workflow/hello.yaml", "hello_nodes.py", "inputs/world.txt"]
    assert "run it: cd hello && python -m wtb_conf -m workflow=hello" in proc.stdout
    run_bench(project, "-m", "workflow=hello", cold=True)
    runs = json.loads(wtb(project, "runs", "--json").stdout)
    assert [r["status"] for r in runs] == ["completed"]
    shown = json.loads(wtb(project, "show", "last", "--json").stdout)
    assert shown["cases"][0]["final_state"]["greeting"] == "Hello, world!"
    assert shown["evaluations"][0]["summary"]["scores"] == {"greeted": 1.0}
    assert json.loads(wtb(project, "fsck", "--json").stdout)["clean"]


def test_init_refuses_to_overwrite_and_names_the_files(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs/world.txt").write_text("mine\n")
    (tmp_path / "hello_nodes.py").write_text("# mine\n")
    proc = wtb(tmp_path, "init")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"wtb: error: {Path('hello_nodes.py')}, {Path('inputs/world.txt')} already exist: "
        "nothing written; run `wtb init` in another directory, or move them")
    assert not (tmp_path / "conf").exists()  # nothing half-written
    assert (tmp_path / "inputs/world.txt").read_text() == "mine\n"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_store_directory_holding_a_users_files_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/orders.csv").write_text("id\n1\n")
    proc = wtb(tmp_path, "init")
    assert "warning: data/ holds files that are not the store's (orders.csv)" in proc.stdout
    run_bench(tmp_path, "-m", "workflow=hello")
    fsck = wtb(tmp_path, "fsck")
    assert fsck.returncode == 0  # a note, not a problem
    assert "note: data/ holds files that are not the store's (orders.csv): keep your inputs " \
           "elsewhere" in fsck.stdout
    assert "wtb.db" not in fsck.stdout.partition("note: data/")[2].partition("\n")[0]
