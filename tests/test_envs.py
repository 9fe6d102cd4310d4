"""Per-job environments end to end: wtb_ray asks the venv manager (embedded, or named by
address) for each job's env and runs that job's actors in it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_project, run_bench
from test_venv_manager import TOKEN, start_server, stop

from wtb_conf.driver.envs import bench_path
from wtb_conf.store import open_store

EXPECTED = {0: ("0.8.10", "grid"), 1: ("0.9.0", "simple_grid")}  # env=tabulate_08,tabulate_09


def check_envs_demo(project: Path, envs_dir: Path) -> None:
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        runs = {r["job_num"]: store.run(r["run_id"]) for r in store.runs(store.last_sweep())}
        assert sorted(runs) == [0, 1]
        for num, (version, fmt) in EXPECTED.items():
            run = runs[num]
            assert run["status"] == "completed", run["error"]
            # it really ran in its env: the interpreter, and the package version it imported
            assert run["python"] == str(envs_dir / run["env_id"] / "venv" / "bin" / "python")
            assert f"tabulate=={version}" in run["env_lock"]
            assert run["metrics"]["orders/tabulate_version"] == version
            assert run["metrics"]["orders/table_format"] == fmt
            # where it ran: this machine, on a Ray actor (#27 item 13)
            assert run["host"] == socket.gethostname() and len(run["ray_node"] or "") == 56
        assert runs[0]["env_id"] != runs[1]["env_id"]
        diff = store.diff(runs[0]["commit"], runs[1]["commit"])
        assert diff.changed == ["orders/table.txt"]


RAY_STARTED = "Started a local Ray instance"


@pytest.mark.slow
def test_envs_demo_with_the_embedded_manager(tmp_path):
    project = copy_project(tmp_path)
    proc = run_bench(project, "-m", "+experiment=envs_demo")
    assert RAY_STARTED in proc.stderr and "(ray, env tabulate_08)" in proc.stdout
    # without a terminal, it says what it builds and when each env is there (was: ~29 s of
    # nothing); the embedded manager's token was made for it, kept 0600 in its data dir
    for version in ("0.8.10", "0.9.0"):
        assert f"tabulate=={version}: asking the venv manager, which builds it with uv" \
            in proc.stdout
        assert re.search(rf"env \w{{12}} \(python [\d.]+, tabulate=={version}\) ready in "
                         r"[\d.]+ s \(built with uv\)", proc.stdout), proc.stdout
    assert (project / "data/venv_manager/token").stat().st_mode & 0o777 == 0o600
    check_envs_demo(project, project / "data/venv_manager/envs")
    # again: both jobs are cache hits, recorded by the planner; Ray is never started
    again = run_bench(project, "-m", "+experiment=envs_demo")
    assert RAY_STARTED not in again.stderr, again.stderr
    assert again.stdout.count(" cached in ") == 2 and "(cache)" in again.stdout
    assert again.stdout.count(" s (it had it)") == 2


@pytest.mark.slow
def test_envs_demo_with_a_manager_named_by_address(tmp_path):
    project = copy_project(tmp_path / "project")
    proc, grpc_addr, _ = start_server(tmp_path / "manager", "--token", TOKEN)
    try:
        run_bench(project, "-m", "+experiment=envs_demo",
                  f"hydra.launcher.planner.venv_manager={grpc_addr}",
                  f"hydra.launcher.planner.venv_manager_token={TOKEN}")
    finally:
        stop(proc)
    check_envs_demo(project, tmp_path / "manager" / "envs")
    assert not (project / "data/venv_manager").exists()  # no embedded manager was started


def test_an_env_python_other_than_the_drivers_is_a_clear_error(tmp_path):
    project = copy_project(tmp_path)
    other = f"{sys.version_info[0]}.{sys.version_info[1] - 1}"
    proc = run_bench(project, "-m", "workflow=table_report", "env=tabulate_09",
                     f"env.python='{other}'", check=False)
    assert proc.returncode != 0
    assert f"env.python={other} but the driver runs Python" in proc.stderr
    assert "env=tabulate_09" in proc.stderr  # names the job
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_manager_address_that_does_not_answer_is_a_clear_error(tmp_path):
    project = copy_project(tmp_path)
    proc = run_bench(project, "-m", "workflow=table_report", "env=tabulate_09",
                     "hydra.launcher.planner.venv_manager=127.0.0.1:9", check=False)
    assert proc.returncode != 0
    assert "the venv manager at 127.0.0.1:9 did not answer" in proc.stderr


@pytest.mark.parametrize("launcher", ["basic", "wtb_ray"])
def test_an_env_job_on_a_launcher_without_the_planner_is_refused_not_run_in_the_driver(
        tmp_path, launcher):
    """Only wtb_conf's planner provisions envs: elsewhere the job would silently run in the
    driver's interpreter, and a comparison of package versions would compare nothing."""
    project = copy_project(tmp_path)
    proc = run_bench(project, "-m", "workflow=table_report", "env=tabulate_08",
                     f"hydra/launcher={launcher}", check=False)
    assert proc.returncode == 1
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        runs = store.runs()
    assert [r["status"] for r in runs] == ["failed"]
    assert runs[0]["error"].startswith("WorkflowError: env: this job asks for its own "
                                       "interpreter")


def test_an_envs_path_holds_the_whole_bench(tmp_path):
    """An env's workers import wtb_conf and its plugins from bench_path's directory alone
    (their interpreter has neither installed): every floor of wtb_conf must be found there."""
    root = bench_path(tmp_path / "bench")
    found = subprocess.run(
        [sys.executable, "-S", "-c", "import importlib.util as u; print(*(u.find_spec(m).origin "
         "for m in ('wtb_conf.job.task', 'wtb_conf.driver.envs', "
         "'hydra_plugins.wtb_conf_launcher.plan')))"],
        env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path, capture_output=True,
        text=True, check=True)
    assert found.stdout.split() == [str(root / "wtb_conf/job/task.py"),
                                    str(root / "wtb_conf/driver/envs.py"),
                                    str(root / "hydra_plugins/wtb_conf_launcher/plan.py")]
