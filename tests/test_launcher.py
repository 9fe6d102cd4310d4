"""hydra/launcher=wtb_ray: Hydra's own launcher suites (local workers, a planner, a joined Ray
cluster), failure handling, a fresh local Ray, jobs beyond cores, parity with basic."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import warm
from conftest import copy_project, run_bench
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.version import VersionBase

from hydra_plugins.wtb_conf_launcher.launcher import WtbRayLauncher
from hydra_plugins.wtb_conf_launcher.plan import Job, Plan
from wtb_conf.store import open_store

HERE = Path(__file__).parent
APP = HERE / "apps" / "crash_app.py"
HOLD_RAY_HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


def test_discovery():
    assert WtbRayLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.fixture(autouse=True)
def unset_version_base():
    """Hydra's suites assume a fresh process; an earlier test's compose() set the version base
    (which decides whether jobs chdir)."""
    saved = Singleton._instances.pop(VersionBase, None)
    yield
    if saved is not None:
        Singleton._instances[VersionBase] = saved


class ChainPlanner:
    """A planner for the suites: every job waits for the one before it and gets an env var;
    a job whose overrides ask for it is done without running."""

    @contextlib.contextmanager
    def __call__(self, jobs: list[Job]) -> Iterator[list[Plan]]:
        plans = [Plan(env_vars={"PLANNED": "1"}, waits_for=i - 1 if i else None)
                 for i in range(len(jobs))]
        for job, plan in zip(jobs, plans, strict=True):
            if "+done=1" in job.overrides:
                plan.done, plan.result = True, "planned"
        yield plans


PLANNER = "hydra.launcher.planner={_target_:test_launcher.ChainPlanner}"


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """A running Ray cluster (the `ray start --head` workflow), held by a process of ours."""
    head = subprocess.Popen([sys.executable, "-c", HOLD_RAY_HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    address = head.stdout.readline().strip()
    assert address, "the test's Ray head did not start"
    yield address
    import ray

    # The suites' in-process launches joined it: leave first, or Ray's core worker ends this
    # very process (exit 1) once the cluster it was connected to has been gone for a minute.
    if ray.is_initialized():
        ray.shutdown()
    head.stdin.close()
    head.wait(timeout=120)


@pytest.mark.parametrize("launcher_name, overrides",
                         [("wtb_ray", []), ("wtb_ray", [PLANNER])], ids=["local", "planner"])
class TestWtbRayLauncher(LauncherTestSuite):
    pass


class TestWtbRayLauncherOnRay(LauncherTestSuite):
    @pytest.fixture
    def launcher_name(self):
        return "wtb_ray"

    @pytest.fixture
    def overrides(self, joined):
        return [f"hydra.launcher.address={joined}"]


def _integration(*extra: str) -> tuple[dict, list[str]]:
    return ({"defaults": [{"override hydra/launcher": "wtb_ray"},
                          {"override hydra/hydra_logging": "hydra_debug"},
                          {"override hydra/job_logging": "disabled"}]}, ["-m", *extra])


@pytest.mark.parametrize("task_launcher_cfg, extra_flags",
                         [_integration(), _integration(PLANNER)], ids=["local", "planner"])
class TestWtbRayLauncherIntegration(IntegrationTestSuite):
    @pytest.fixture(autouse=True)
    def _planner_importable(self, monkeypatch):  # the suite's apps run in other directories
        path = os.environ.get("PYTHONPATH")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), path])))


@pytest.mark.slow
def test_a_planner_s_done_jobs_and_env_vars_reach_hydra(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=ok", PLANNER, xs="0,1,2", extra=["+done=0,1"])
    assert proc.returncode == 0, proc.stderr
    # 6 jobs: the three with +done=1 did not run (one done-* file per x, not two)
    assert done_jobs(tmp_path) == [0, 1, 2]
    assert "(planned)" in proc.stdout


def crash_sweep(tmp_path: Path, *overrides: str, xs: str = "0,1,2,3",
                extra: list[str] | None = None, env: dict[str, str] | None = None):
    return warm.run(
        str(APP), ["-m", "hydra/launcher=wtb_ray", f"+x={xs}", "+bad=2", *(extra or []),
                   f"hydra.sweep.dir={tmp_path}/sweep", "hydra.launcher.progress=false",
                   *overrides],
        tmp_path, timeout=300,
        env={**(env or os.environ), "PYTHONPATH": str(HERE)},  # ChainPlanner
    )


def done_jobs(tmp_path: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (tmp_path / "sweep").glob("*/done-*"))


def ray_processes(home: Path | None = None) -> dict[int, str]:
    """Ray's own live processes on this machine (raylet, GCS, workers): pid -> command line;
    with `home`, only those whose environment has HOME=home (those a sweep run with that HOME
    started: they inherit it), so that other tests' clusters (parallel workers) do not count."""
    out = {}
    mark = f"HOME={home}".encode() if home else None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if mark and mark not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if "/ray/core/src/ray/" in cmd or cmd.startswith("ray::"):
            out[int(pid)] = cmd[:80]
    return out


def test_a_raising_job_fails_alone_and_the_sweep_exits_nonzero(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=raise")
    assert proc.returncode != 0
    assert "job x=2 raised on purpose" in proc.stderr
    assert done_jobs(tmp_path) == [0, 1, 3]
    assert "[wtb_ray] 4/4" in proc.stdout  # plain progress lines when not a terminal


def test_a_job_whose_process_is_killed_is_retried_in_a_new_one(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=kill_once", f"+marker={tmp_path}/died")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "died").exists() and done_jobs(tmp_path) == [0, 1, 2, 3]
    assert "lost its process; retrying" in proc.stdout


def test_a_job_whose_process_is_always_killed_is_recorded_failed(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=kill", "hydra.launcher.max_retries=1")
    assert proc.returncode != 0
    assert "lost its process; retrying" in proc.stdout
    assert "WorkerDied: its local worker" in proc.stderr and "killed by SIGKILL" in proc.stderr
    assert done_jobs(tmp_path) == [0, 1, 3]


def test_a_job_that_exits_its_process_is_failed_without_a_retry(tmp_path):
    proc = crash_sweep(tmp_path, "+mode=exit", "hydra.launcher.max_retries=3")
    assert proc.returncode != 0
    assert "retrying" not in proc.stdout
    assert "exited with code 3" in proc.stderr and "not retried" in proc.stderr
    assert done_jobs(tmp_path) == [0, 1, 3]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_wtb_job_whose_process_dies_is_failed_with_the_cause(tmp_path):
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
    assert runs[0]["status"] == "failed"
    assert runs[0]["error"].startswith("WorkerDied: its local worker") and \
        "exited with code 9" in runs[0]["error"]


@pytest.mark.parametrize(
    ("override", "message"),
    [("hydra.launcher.num_cpus=64", "hydra.launcher.num_cpus=64.0 but this machine has"),
     ("hydra.launcher.num_actors=0", "hydra.launcher.num_actors=0 is out of range"),
     ("hydra.launcher.max_retries=lots", "hydra.launcher.max_retries")],
)
def test_bad_launcher_settings_are_clear_errors(tmp_path, override, message):
    proc = crash_sweep(tmp_path, "+mode=ok", override)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert done_jobs(tmp_path) == []


@pytest.mark.slow
def test_on_a_fresh_local_ray_a_dead_actor_is_replaced_and_ray_is_stopped(tmp_path):
    """`local_workers=false`: the default path to a local Ray, started for the sweep, with
    Ray's own auth defaults (a token it writes to $HOME/.ray, here a temporary HOME)."""
    before = ray_processes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = crash_sweep(tmp_path, "+mode=kill_once", f"+marker={tmp_path}/died",
                       "hydra.launcher.local_workers=false",
                       env={**env, "HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    assert done_jobs(tmp_path) == [0, 1, 2, 3]
    assert "(ray)" in proc.stdout and "lost its process; retrying" in proc.stdout
    # The cluster it started is gone with it: no Ray process it started is left. (Another
    # cluster's, the module's `joined` one, may lose actors meanwhile.) Its workers exit on
    # their own once their raylet has gone, which on a loaded machine can take a moment.
    deadline = time.monotonic() + 60
    home = tmp_path / "home"
    while (left := ray_processes(home).keys() - before.keys()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [ray_processes(home).get(pid) for pid in left]


@pytest.mark.slow
def test_twenty_jobs_run_at_once_on_two_cores(tmp_path):
    """Jobs that wait (an LLM call) need no core: num_cpus=0.1 runs 20 at once. Each job
    waits until all 20 have started; with fewer at once they would time out instead."""
    proc = warm.run(
        str(APP), ["-m", "hydra/launcher=wtb_ray", "+x=range(0,20)", "+mode=barrier",
                   "+parties=20", f"+marker={tmp_path}/barrier",
                   f"hydra.sweep.dir={tmp_path}/sweep", "hydra.launcher.progress=false",
                   "hydra.launcher.num_cpus=0.1", "hydra.launcher.timeout_s=120"],
        tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert done_jobs(tmp_path) == list(range(20))
    pids = {p.read_text() for p in (tmp_path / "sweep").glob("*/done-*")}
    assert len(pids) == 20  # twenty processes, not threads of one


RAYLET_DUMP = """The actor died unexpectedly before finishing this task.
\tclass_name: JobActor
\tactor_id: 9f0b093b761bd9846fca1d9406000000
\tpid: 17732
\tnamespace: 5c1f
\tip: 192.0.2.3
The actor is dead because its node has died. Node Id: fd033c0d
\tthe actor's node was terminated unexpectedly
""" + "\n".join(f"\t[raylet] line {i} of the raylet's dump" for i in range(14))


@pytest.mark.parametrize(("report", "gist"), [
    (RAYLET_DUMP, "The actor died unexpectedly before finishing this task. The actor is dead "
                  "because its node has died. Node Id: fd033c0d"),
    ("The actor 9f0b is unavailable: RpcError: Socket closed",
     "The actor 9f0b is unavailable: RpcError: Socket closed"),
    ("x" * 400, "x" * 300 + "…"),
])
def test_a_dead_actors_error_keeps_the_gist_of_rays_report(report, gist):
    """#27 item 13: Ray prints its report itself; the retry's line and the run's error had
    it again whole (the report stays in the run's traceback)."""
    from hydra_plugins.wtb_conf_launcher._ray import _gist

    assert _gist(RuntimeError(report)) == gist
