"""Fault injection for venv_manager: the manager killed with kill -9 in the middle of a build.

A real server process (`python -m venv_manager serve`, real uv, real gRPC, real PyPI), as in
tests/test_venv_manager.py, but started in a session of its own so that the kill takes its
whole process group: the manager and the uv it is running die together, as when a service
manager or the OOM killer ends the unit. (Killed alone, the manager's uv runs on as an orphan
and keeps the build's lock until it exits; see docs/venv_manager.md.)

The envs are tiny (six, one pure-Python wheel) and uv's cache is warm after the first build.
The rebuild and Cleanup times are printed: `pytest -s tests/reliability/test_venv_faults.py`.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from venv_manager.envs import EnvStore
from venv_manager.proto import venv_manager_pb2 as pb
from venv_manager.proto import venv_manager_pb2_grpc as pb_grpc
from venv_manager.spec import EnvSpec

PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
REBUILT = ["six==1.16.0"]  # asked again after the crash
ABANDONED = ["six==1.15.0"]  # never asked again: only Cleanup removes its leftovers


def env_id(packages: list[str]) -> str:
    return EnvSpec.create(PYTHON, packages).env_id


def start_server(data: Path) -> tuple[subprocess.Popen, pb_grpc.VenvManagerStub]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "venv_manager", "serve", "--grpc-port", "0", "--rest-port", "-1",
         "--data", str(data), "--no-token"],  # (the token is tests/test_venv_manager_guards.py's)
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: killpg takes it and its uv, not us
    )
    line = proc.stdout.readline()
    assert "grpc=" in line, proc.stderr.read()
    address = dict(p.split("=", 1) for p in line.split()[2:])["grpc"]
    return proc, pb_grpc.VenvManagerStub(grpc.insecure_channel(address))


def group_members(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes of a process group: pid -> command line."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members[int(entry.name)] = cmdline
    return members


def staging(data: Path) -> list[Path]:
    return sorted((data / "envs").glob(".tmp-*"))


def lock_is_free(data: Path, env: str) -> bool:
    with open(data / "locks" / f"{env}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def kill_group_while_uv_installs(proc: subprocess.Popen, data: Path) -> str:
    """Wait until both builds are staged and a `uv pip install` runs, then kill -9 the whole
    group; returns the uv command line that was caught mid-build."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        installs = [c for c in group_members(proc.pid).values() if " pip install " in c]
        if installs and len(staging(data)) == 2:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return installs[0]
        assert proc.poll() is None, f"the manager died by itself: {proc.stderr.read()}"
        time.sleep(0.002)  # uv's install of six lasts ~0.3 s: polling this fast catches it
    raise AssertionError(f"no uv install seen within 120 s; staging dirs: {staging(data)}")


def test_a_manager_killed_mid_build_serves_no_half_env_and_cleanup_removes_the_leftovers(
    tmp_path,
):
    data = tmp_path / "vm"
    rebuilt, abandoned = env_id(REBUILT), env_id(ABANDONED)
    proc, stub = start_server(data)
    futures = [stub.EnsureEnv.future(pb.EnvSpec(python=PYTHON, packages=p), timeout=600)
               for p in (REBUILT, ABANDONED)]
    caught = kill_group_while_uv_installs(proc, data)
    for future in futures:
        with pytest.raises(grpc.RpcError):
            future.result()
    deadline = time.monotonic() + 30
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not group_members(proc.pid), f"survived the group kill: {group_members(proc.pid)}"

    # What the crash left: two half builds, no env, and locks the kernel has dropped.
    left = staging(data)
    assert {p.name[5:69] for p in left} == {rebuilt, abandoned}, (caught, left)
    assert not [p for p in (data / "envs").iterdir() if not p.name.startswith(".")]
    assert lock_is_free(data, rebuilt) and lock_is_free(data, abandoned)

    proc, stub = start_server(data)
    try:
        # The restarted manager serves nothing of the half builds.
        assert stub.ListEnvs(pb.ListEnvsRequest()).envs == []
        for env in (rebuilt, abandoned):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetEnv(pb.EnvRef(env_id=env))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                stub.RunCode(pb.RunCodeRequest(env_id=env, code="import six"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

        t = time.perf_counter()
        env = stub.EnsureEnv(pb.EnvSpec(python=PYTHON, packages=REBUILT), timeout=600)
        rebuild_s = time.perf_counter() - t
        assert env.env_id == rebuilt and "six==1.16.0" in env.lock
        ops = stub.History(pb.HistoryRequest(env_id=rebuilt)).operations
        assert [o.status for o in ops if o.operation == "EnsureEnv"] == ["built"]
        # It works, asked of its own interpreter rather than of the manager.
        out = subprocess.run([env.python_path, "-c", "import six; print(six.__version__)"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "1.16.0", out.stderr
        # The rebuild cleared its own dead predecessor; the abandoned one waits for Cleanup.
        assert [p.name[5:69] for p in staging(data)] == [abandoned]

        t = time.perf_counter()
        removed = stub.Cleanup(pb.CleanupRequest(idle_seconds=3600)).removed
        cleanup_s = time.perf_counter() - t
        assert list(removed) == []  # the rebuilt env was just used: it stays
        assert len(staging(data)) == 0, staging(data)
        record = stub.History(pb.HistoryRequest(page_size=1)).operations[0]
        assert record.operation == "Cleanup" and abandoned in record.stdout
        assert stub.GetEnv(pb.EnvRef(env_id=rebuilt)).env_id == rebuilt
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    print(f"\nkilled mid-build: {caught.strip()}\nrebuild after the crash: {rebuild_s:.2f} s, "
          f"Cleanup of the leftovers: {cleanup_s:.3f} s")


def test_cleanup_tells_a_live_build_from_a_dead_builders_leftovers(tmp_path):
    """No age threshold: a staging dir whose env's flock a live process holds stays, however
    old; the same dir goes at the next Cleanup once that process is dead."""
    store = EnvStore(tmp_path)
    live, dead = env_id(["six==1.16.0"]), env_id(["six==1.15.0"])
    for env in (live, dead):
        (tmp_path / "envs" / f".tmp-{env}-x" / "venv").mkdir(parents=True)
        old = time.time() - 7200  # older than the hour cleanup used to wait for
        os.utime(tmp_path / "envs" / f".tmp-{env}-x", (old, old))
    builder = subprocess.Popen(  # stands in for a live builder: holds the env's flock
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
         str(tmp_path / "locks" / f"{live}.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline() == "locked\n"
        store.cleanup(3600)
        assert [p.name for p in staging(tmp_path)] == [f".tmp-{live}-x"]
    finally:
        builder.kill()  # dies as a killed manager would: the kernel drops its flock
        builder.wait()
    store.cleanup(3600)
    assert staging(tmp_path) == []
