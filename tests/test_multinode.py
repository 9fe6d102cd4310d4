"""Jobs on several nodes, for real: a Ray cluster of `ray start` processes on this machine
(tests/raycluster.py): a head with no CPUs (no job lands where the driver's files are) and two
worker nodes, each with its own Ray temp dir and envs root, and each in a mount namespace in
which the driver's launch dirs are hidden under a tmpfs. The sweep joins it with
`hydra.launcher.address` and `shared_disk=false`: the code and input files reach the nodes
only as the launcher ships them, each node builds its envs with its own venv manager, and
every run lands in the one store the driver reads.

The cluster keeps Ray's own health checks (a killed node is listed dead only after tens of
seconds): the launcher must retry a lost node's jobs on the others without waiting for them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import copy_project, run_bench, wtb
from raycluster import RayCluster

from wtb_conf.store import open_store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("unshare"),
                                reason="needs Linux mount namespaces (unshare)")

WAIT_S = 240  # a bound on waiting for a job to reach a node, not a timing assertion

# A workflow whose one node waits until a flag file exists (a path outside the hidden dir):
# the lost-node test kills a node while its job is surely running, then lets the jobs go on.
SLOW_NODES = '''
import os, time
from pathlib import Path
from typing import Any


def wait(state, flag):
    Path("started").write_text(os.environ.get("WTB_ENV_ID", ""))
    while not Path(flag).exists():
        time.sleep(0.1)
    return {"done": True}
'''
SLOW_WORKFLOW = """
state: {done: bool}
nodes:
  wait:
    _target_: slow_nodes.wait
    flag: ""
edges: [[START, wait], [wait, END]]
cases:
  one: {}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # short: Ray's socket paths under each node's temp dir must stay under 107 bytes
    root = Path(tempfile.mkdtemp(prefix="wtbmn-", dir="/tmp"))
    hidden = tmp_path_factory.mktemp("driver")  # every launch dir below; hidden on the nodes
    # Ray's own health checks (tens of seconds before a lost node is listed dead): the
    # launcher must not wait for them to retry a lost node's job on the others
    nodes = RayCluster(root, hidden, workers=2, worker_cpus=1)
    started = time.monotonic()
    try:
        nodes.start()
        print(f"\ncluster of 3 nodes up in {time.monotonic() - started:.1f} s")
        yield nodes, hidden, root
    finally:
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)


def storage(root: Path, pg_url: str) -> list[str]:
    """The store and checkpoints in PostgreSQL, blobs in a directory outside the hidden one
    (a shared disk, as an NFS mount would be)."""
    return [f"storage.db_url={pg_url}", f"storage.checkpoints={pg_url}",
            f"storage.blob_root={root / 'shared' / 'blobs'}"]


def on_cluster(nodes: RayCluster) -> list[str]:
    return [f"hydra.launcher.address={nodes.address}", "hydra.launcher.shared_disk=false"]


def runs_of(store_args: list[str]) -> list[dict]:
    values = dict(a.split("=", 1) for a in store_args)
    with open_store(values["storage.db_url"], values["storage.blob_root"]) as store:
        return [store.run(r["run_id"]) for r in store.runs(store.last_sweep())]


def node_of(run: dict, ids: dict[str, str]) -> str:
    """The node a run's job ran on: its job dir is <node temp>/wtb-jobs/<node id>/..."""
    return next(name for node_id, name in ids.items() if f"/wtb-jobs/{node_id}/" in run["job_dir"])


def audit(envs_root: Path, env_id: str) -> float:
    """Seconds the node's venv manager took to build `env_id`, from its audit records."""
    with contextlib.closing(sqlite3.connect(envs_root / "env_audit.db")) as db:
        rows = db.execute("SELECT duration_s FROM operations WHERE env_id = ? AND "
                          "status = 'built'", (env_id,)).fetchall()
    assert len(rows) == 1, rows  # built once there, by that node's own manager
    return rows[0][0]


def builds(root: Path) -> int:
    """Env builds on either node, from their managers' audits: two envs, two builds, when each
    job goes where its env is (or gets it built there once)."""
    total = 0
    for node in ("n1", "n2"):
        if (root / node / "envs" / "env_audit.db").exists():
            with contextlib.closing(sqlite3.connect(root / node / "envs" / "env_audit.db")) as db:
                total += db.execute("SELECT count(*) FROM operations "
                                    "WHERE status = 'built'").fetchone()[0]
    return total


@pytest.mark.slow
def test_a_sweep_with_two_envs_runs_across_the_nodes_into_one_store(cluster, tmp_path, pg_url):
    nodes, hidden, root = cluster
    project = copy_project(Path(tempfile.mkdtemp(dir=hidden)))
    store_args = storage(root, pg_url)
    started = time.monotonic()
    proc = run_bench(project, "-m", "+experiment=envs_demo", *on_cluster(nodes), *store_args)
    took = time.monotonic() - started
    ids = nodes.node_ids()
    runs = runs_of(store_args)
    print(f"envs_demo on 2 nodes: {took:.1f} s (env builds included)\n{proc.stdout}")
    assert sorted(r["job_num"] for r in runs) == [0, 1]
    where = {r["job_num"]: node_of(r, ids) for r in runs}
    assert set(where.values()) == {"n1", "n2"}, where  # one job per node: both nodes ran one
    for run in runs:
        assert run["status"] == "completed", run["error"]
        node = where[run["job_num"]]
        # the env was built on that node, under its own envs root, by its own manager
        assert run["python"].startswith(str(root / node / "envs")), run["python"]
        built = audit(root / node / "envs", run["env_id"])
        print(f"env {run['env_id'][:12]} built on {node} in {built:.1f} s")
        # its input file was found on its node, where only the shipped copy has it
        assert run["inputs_commit"], run
        # and the run records the driver's launch dir (what `wtb rerun` goes back to)
        assert run["launch_dir"] == str(project), run["launch_dir"]
    versions = {r["metrics"]["orders/tabulate_version"] for r in runs}
    assert versions == {"0.8.10", "0.9.0"}
    built = builds(root)
    # every file back on the driver, from the store alone, equal to what the node wrote
    for run in runs:
        out = tmp_path / run["run_id"]
        values = dict(a.split("=", 1) for a in store_args)
        wtb(tmp_path, "--db", values["storage.db_url"], "--blobs", values["storage.blob_root"],
            "restore", run["run_id"], "--to", str(out))
        written = Path(run["job_dir"]) / "out"
        expected = {p.relative_to(written): p.read_bytes()
                    for p in written.rglob("*") if p.is_file()}
        assert expected and {p.relative_to(out): p.read_bytes()
                             for p in out.rglob("*") if p.is_file()} == expected
    # again: each job finds its env on its node (no build) and its earlier run by the lock
    # its node reports: both cache hits, recorded by the jobs themselves on their nodes
    started = time.monotonic()
    run_bench(project, "-m", "+experiment=envs_demo", *on_cluster(nodes), *store_args)
    print(f"the same sweep again: {time.monotonic() - started:.1f} s")
    assert {r["status"] for r in runs_of(store_args)} == {"cached"}
    assert builds(root) == built  # each job went where its env was: nothing built again


@pytest.mark.slow
def test_on_a_shared_disk_each_job_still_gets_its_env_on_its_node(cluster, tmp_path, pg_url):
    """shared_disk left true: this launch dir is outside the hidden one, so every node sees it
    at its path (as an NFS home would be). Nothing is shipped and the job dirs are the usual
    ones, but the envs are still the nodes' own; after the test above, found, not built."""
    nodes, _, root = cluster
    project = copy_project(tmp_path / "project")
    store_args = storage(root, pg_url)
    started = time.monotonic()
    run_bench(project, "-m", "+experiment=envs_demo", f"hydra.launcher.address={nodes.address}",
              *store_args)
    print(f"envs_demo on 2 nodes, shared disk: {time.monotonic() - started:.1f} s")
    runs = runs_of(store_args)
    where = {}
    for run in runs:
        assert run["status"] == "completed", run["error"]
        assert run["job_dir"].startswith(str(project / "multirun")), run["job_dir"]
        where[run["job_num"]] = next(n for n in ("n1", "n2")
                                     if run["python"].startswith(str(root / n / "envs")))
        audit(root / where[run["job_num"]] / "envs", run["env_id"])  # built there once only
    assert set(where.values()) == {"n1", "n2"}, where


@pytest.mark.slow
def test_a_node_lost_mid_sweep_has_its_jobs_retried_on_the_other(cluster, tmp_path, pg_url):
    nodes, hidden, root = cluster
    project = copy_project(Path(tempfile.mkdtemp(dir=hidden)))
    (project / "slow_nodes.py").write_text(SLOW_NODES)
    (project / "conf/workflow/slow.yaml").write_text(SLOW_WORKFLOW)
    flag = root / "shared" / f"go-{tmp_path.name}"
    store_args = storage(root, pg_url)
    ids = {name: node_id for node_id, name in nodes.node_ids().items()}
    started = time.monotonic()
    sweep = subprocess.Popen(
        [sys.executable, "-m", "wtb_conf", "-m", "workflow=slow",
         "+workflow.cases.one.done=false,true", "share_prefixes=false",
         f"workflow.nodes.wait.flag={flag}", *on_cluster(nodes), *store_args,
         "hydra.launcher.max_retries=1"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    restart = False
    reader = threading.Thread(target=lambda: lines.extend(sweep.stdout), daemon=True)
    reader.start()

    def wait_for(what: str, done: Any) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done():
            assert sweep.poll() is None or done(), "".join(lines)
            assert time.monotonic() < deadline, f"{what}:\n{''.join(lines)}"
            time.sleep(0.2)

    try:
        # both jobs running, one per node: kill n1 while its job waits for the flag
        jobs = {name: root / name / "wtb-jobs" / ids[name] for name in ("n1", "n2")}
        wait_for("the jobs did not start on both nodes",
                 lambda: all(list(d.rglob("started")) for d in jobs.values()))
        killed = time.monotonic()
        nodes.kill("n1")
        restart = True
        # the flag only once the lost job is being retried: n2's job still holds the one CPU
        # left, so the retried job must wait for it (not for an actor that can never start)
        wait_for("the lost job was not retried", lambda: "retrying (1/1)" in "".join(lines))
        flag.write_text("go")
        sweep.wait(timeout=WAIT_S)
        reader.join(timeout=WAIT_S)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        if restart:
            nodes.restart("n1")  # for whichever test uses the cluster next
    out = "".join(lines)
    print(f"lost-node sweep: {time.monotonic() - started:.1f} s, "
          f"{time.monotonic() - killed:.1f} s after the kill\n{out}")
    assert sweep.returncode == 0, out
    runs = runs_of(store_args)
    final = {r["job_num"]: r for r in runs}  # the newest run of each job (runs come in order)
    assert {r["status"] for r in final.values()} == {"completed"}, final
    assert {node_of(r, {ids["n2"]: "n2"}) for r in final.values()} == {"n2"}
    lost = [r for r in runs if r["status"] == "failed"]
    assert len(lost) == 1 and "WorkerDied" in lost[0]["error"], [r["error"] for r in runs]
    assert "retried" in lost[0]["error"] and f"/wtb-jobs/{ids['n1']}/" in lost[0]["job_dir"]
    assert "retrying (1/1)" in out


PG = "postgresql+psycopg://wtb@db.example:5432/wtb"  # never reached: refused before
WHY = ("but hydra.launcher.shared_disk=false runs jobs on nodes that do not share this "
       "machine's disk")


def test_a_store_the_nodes_cannot_reach_is_refused_before_the_sweep_is_recorded(tmp_path):
    project = copy_project(tmp_path)
    proc = run_bench(project, "-m", "+experiment=envs_demo", "hydra.launcher.address=127.0.0.1:9",
                     "hydra.launcher.shared_disk=false", check=False)
    assert proc.returncode == 1, proc.stderr
    assert (f"storage.db_url=sqlite:///data/wtb.db is an SQLite file here, {WHY}: use a "
            "PostgreSQL server every node reaches, storage.db_url="
            "postgresql+psycopg://USER@HOST/DB (or storage=postgres)") in proc.stderr
    assert "Traceback" not in proc.stderr and not (project / "data").exists()


@pytest.mark.parametrize("storage_cfg, message", [
    ({"db_url": PG, "checkpoints": "data/checkpoints.db", "blob_root": "/shared/blobs"},
     f"storage.checkpoints=data/checkpoints.db is an SQLite file here, {WHY}: use a PostgreSQL "
     "URL, storage.checkpoints=postgresql://USER@HOST/DB (storage=postgres uses "
     "storage.db_url's database)"),
    ({"db_url": PG, "checkpoints": PG, "blob_root": "data/blobs"},
     f"storage.blob_root=data/blobs is inside the launch dir, {WHY}: use a directory every "
     "node mounts at the same absolute path, or an object store URL, "
     "storage.blob_root=s3://BUCKET/PREFIX"),
])
def test_the_store_check_names_the_key_and_what_is_valid(storage_cfg, message):
    from hydra_plugins.wtb_conf_launcher.settings import LauncherError, check

    params = {"address": "127.0.0.1:9", "shared_disk": False,
              "planner": {"_target_": "wtb_conf.driver.planner.Planner", "storage": storage_cfg}}
    with pytest.raises(LauncherError) as e:
        check(params)
    assert str(e.value) == message
    # a store every node reaches passes: PostgreSQL, an absolute (shared) or s3:// blob root
    for blob_root in ("/shared/blobs", "s3://bucket/prefix"):
        check({**params, "planner": {**params["planner"], "storage": {
            "db_url": PG, "checkpoints": PG, "blob_root": blob_root}}})


def test_a_store_inside_the_launch_dir_or_code_outside_it_is_refused(tmp_path, monkeypatch):
    """Absolute paths the nodes would write or read on their own disks: a blob root in the
    launch dir (each node's copy: the driver never sees the blobs), a checkpoints URL that is
    SQLite's, code_paths outside the shipped launch dir."""
    from hydra_plugins.wtb_conf_launcher.settings import LauncherError, check

    monkeypatch.chdir(tmp_path)
    params = {"address": "127.0.0.1:9", "shared_disk": False,
              "planner": {"_target_": "wtb_conf.driver.planner.Planner", "storage": {
                  "db_url": PG, "checkpoints": PG, "blob_root": "/shared/blobs"}}}
    check(params)
    for change, culprit in [({"blob_root": str(tmp_path / "data/blobs")}, "storage.blob_root"),
                            ({"blob_root": f"file://{tmp_path}/b"}, "storage.blob_root"),
                            ({"checkpoints": "sqlite:////x/cp.db"}, "storage.checkpoints")]:
        storage = {**params["planner"]["storage"], **change}
        with pytest.raises(LauncherError, match=re.escape(culprit)):
            check({**params, "planner": {**params["planner"], "storage": storage}})
    with pytest.raises(LauncherError, match=r"hydra.launcher.code_paths: /opt/mycode is outside"):
        check({**params, "code_paths": ["/opt/mycode"]})
    check({**params, "code_paths": ["lib", str(tmp_path / "src")]})  # shipped with the dir


def test_shared_disk_false_without_a_cluster_is_refused(monkeypatch):
    from hydra_plugins.wtb_conf_launcher.settings import LauncherError, check

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(LauncherError, match="hydra.launcher.shared_disk=false ships the launch "
                                            "dir to the nodes of a Ray cluster: set "
                                            "hydra.launcher.address"):
        check({"shared_disk": False})


def test_a_shipped_job_runs_from_its_copy_with_its_job_dir_on_its_node(tmp_path):
    from omegaconf import OmegaConf

    from hydra_plugins.wtb_conf_launcher._nodes import relocate

    config = OmegaConf.create({"hydra": {"runtime": {"cwd": "/home/me/proj"},
                                         "sweep": {"dir": "/home/me/proj/multirun/d/t"}}})
    OmegaConf.set_readonly(config.hydra.runtime, True)  # as Hydra leaves it
    relocate(config, "/ray/copy", tmp_path / "jobs")
    assert config.hydra.runtime.cwd == "/ray/copy"
    assert config.hydra.sweep.dir == str(tmp_path / "jobs" / "multirun/d/t")
    # a sweep dir outside the launch dir: its whole path, under the node's jobs root
    outside = OmegaConf.create({"hydra": {"runtime": {"cwd": "/home/me/proj"},
                                          "sweep": {"dir": "/scratch/sweeps/x"}}})
    relocate(outside, "/ray/copy", tmp_path / "jobs")
    assert outside.hydra.sweep.dir == str(tmp_path / "jobs" / "scratch/sweeps/x")


def test_placement_prefers_free_nodes_then_those_with_the_env(monkeypatch):
    from hydra_plugins.wtb_conf_launcher import _nodes

    nodes = [{"NodeID": "head", "Alive": True, "Resources": {}},
             {"NodeID": "a", "Alive": True, "Resources": {"CPU": 2.0}},
             {"NodeID": "b", "Alive": True, "Resources": {"CPU": 2.0}},
             {"NodeID": "gone", "Alive": False, "Resources": {"CPU": 8.0}}]
    monkeypatch.setattr(_nodes.ray, "nodes", lambda: nodes)
    placer = _nodes.Placer(num_cpus=1.0)
    placer.asked = True  # (no Ray here: the agents are not asked what they have)
    placer.provided["b"].add("env1")
    assert placer.pick("env1") == "b"  # both free: the one that has the env
    placer.placed["b"] = 2
    assert placer.pick("env1") == "a"  # b is full: a free node, even without the env
    placer.placed["a"] = 2
    assert placer.pick("env1") == "b"  # all full: it waits where its env is
    nodes[2]["Alive"] = False
    placer.gone("b")  # an actor died there and Ray lists the node dead: never again
    nodes[2]["Alive"] = True
    assert placer.pick("env1") == "a"
