"""hydra/launcher=wtb_ray: Hydra's own launcher suites, failure handling, parity with basic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_project, run_bench
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.wtb_conf_launcher.launcher import WtbRayLauncher
from wtb_conf.store import open_store

APP = Path(__file__).parent / "apps" / "crash_app.py"
pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_discovery():
    assert WtbRayLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("wtb_ray", [])])
class TestWtbRayLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {"defaults": [{"override hydra/launcher": "wtb_ray"},
                          {"override hydra/hydra_logging": "hydra_debug"},
                          {"override hydra/job_logging": "disabled"}]},
            ["-m"],
        )
    ],
)
class TestWtbRayLauncherIntegration(IntegrationTestSuite):
    pass


def crash_sweep(tmp_path: Path, *overrides: str, xs: str = "0,1,2,3"):
    return subprocess.run(
        [sys.executable, str(APP), "-m", "hydra/launcher=wtb_ray", f"+x={xs}", "+bad=2",
         f"hydra.sweep.dir={tmp_path}/sweep", "hydra.launcher.progress=false", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


def done_jobs(tmp_path: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (tmp_path / "sweep").glob("*/done-*"))


def test_a_raising_job_fails_alone_and_the_sweep_exits_nonzero(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=raise")
    assert proc.returncode != 0
    assert "job x=2 raised on purpose" in proc.stderr
    assert done_jobs(tmp_path) == [0, 1, 3]
    assert "[wtb_ray] 4/4" in proc.stdout  # plain progress lines when not a terminal


def test_a_job_that_kills_its_actor_is_retried_on_a_new_actor(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=exit_once", f"+marker={tmp_path}/died")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "died").exists() and done_jobs(tmp_path) == [0, 1, 2, 3]
    assert "lost its actor; retrying" in proc.stdout


def test_a_job_that_always_kills_its_actor_is_recorded_failed(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=exit", "hydra.launcher.max_retries=1")
    assert proc.returncode != 0
    assert "ActorDiedError" in proc.stderr or "actor died" in proc.stderr.lower()
    assert done_jobs(tmp_path) == [0, 1, 3]


def test_a_job_over_its_timeout_is_killed_and_failed(tmp_path):
    # The clock starts when the job is handed to an actor, actor start included (seconds on
    # a loaded 2-core machine): 10 s leaves room for that, and the bad job sleeps 60.
    proc = crash_sweep(tmp_path, "+mode=sleep", "hydra.launcher.timeout_s=10")
    assert proc.returncode != 0
    assert "ran over hydra.launcher.timeout_s=10" in proc.stderr
    assert done_jobs(tmp_path) == [0, 1, 3]


def test_fail_fast_launches_nothing_after_the_first_failure(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=raise", "hydra.launcher.fail_fast=true",
                       "hydra.launcher.num_actors=1", xs="2,0,1,3")
    assert proc.returncode != 0
    assert done_jobs(tmp_path) == []


def runs_by_job(project: Path) -> dict[int, dict]:
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        return {r["job_num"]: r for r in store.runs(store.last_sweep())}


def test_parity_with_the_basic_launcher(demo, tmp_path):
    basic = copy_project(tmp_path)
    run_bench(basic, "-m", "+experiment=demo", "hydra/launcher=basic")
    on_ray, on_basic = runs_by_job(demo), runs_by_job(basic)
    assert sorted(on_ray) == sorted(on_basic) == [0, 1, 2, 3]
    for num, run in on_ray.items():
        other = on_basic[num]
        assert run["overrides"] == other["overrides"]
        # checkpoint counts may differ: which prefix a job inherits depends on the order jobs
        # finish in; the outputs may not
        # and the same job key: a job run on one launcher is a cache hit on the other
        assert (run["status"], run["commit"], run["config_digest"], run["job_key"]) == (
            other["status"], other["commit"], other["config_digest"], other["job_key"])


def test_wtb_job_whose_actor_dies_is_marked_interrupted(tmp_path):
    project = copy_project(tmp_path)
    nodes = project / "experiments/file_processing/nodes.py"
    nodes.write_text(nodes.read_text() + "\n\ndef die(state):\n    import os\n    os._exit(9)\n")
    proc = run_bench(project, "-m", "workflow=file_processing", "variant=drop_invalid",
                     "workflow.nodes.validate._target_=experiments.file_processing.nodes.die,"
                     "experiments.file_processing.nodes.validate",
                     "hydra.launcher.max_retries=0", check=False)
    assert proc.returncode != 0
    runs = runs_by_job(project)
    assert runs[1]["status"] == "completed"
    assert runs[0]["status"] == "failed" and "interrupted" in runs[0]["error"]


@pytest.mark.parametrize(
    ("override", "message"),
    [("hydra.launcher.num_cpus=64", "hydra.launcher.num_cpus=64.0 but the Ray cluster has 2"),
     ("hydra.launcher.num_actors=0", "hydra.launcher.num_actors=0 is out of range"),
     ("hydra.launcher.max_retries=lots", "hydra.launcher.max_retries")],
)
def test_bad_launcher_settings_are_clear_errors(tmp_path, override, message):
    proc = crash_sweep(tmp_path, "+mode=ok", override)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert done_jobs(tmp_path) == []
