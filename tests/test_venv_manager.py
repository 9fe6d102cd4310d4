"""venv_manager against a real server over real channels (gRPC and HTTP), real uv, real PyPI.

The envs are kept small (six, a pure-Python wheel) and shared by the tests of this module.
"""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from venv_manager.envs import EnvStore
from venv_manager.genproto import generate
from venv_manager.proto import venv_manager_pb2 as pb
from venv_manager.proto import venv_manager_pb2_grpc as pb_grpc
from venv_manager.rest import app
from venv_manager.server import grpc_server
from wtb_conf.driver.envs import EnvError, VenvClient

TOKEN = "s3cret-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
SIX = pb.EnvSpec(python=f"{sys.version_info[0]}.{sys.version_info[1]}",
                 packages=["six==1.16.0"], labels={"workflow": "demo"})


def start_server(data: Path, *args: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "venv_manager", "serve", "--grpc-port", "0", "--rest-port", "0",
         "--data", str(data), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert "grpc=" in line, proc.stderr.read()
    parts = dict(p.split("=", 1) for p in line.split()[2:])
    return proc, parts["grpc"], parts["rest"]


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, grpc_addr, rest_addr = start_server(tmp_path_factory.mktemp("vm"), "--token", TOKEN)
    channel = grpc.insecure_channel(grpc_addr)
    yield pb_grpc.VenvManagerStub(channel), channel, grpc_addr, f"http://{rest_addr}"
    channel.close()
    stop(proc)


@pytest.fixture(scope="module")
def six_env(server):
    stub = server[0]
    return stub.EnsureEnv(SIX, metadata=AUTH, timeout=600)


def test_stubs_are_generated_from_the_proto(tmp_path):
    generate(tmp_path)
    committed = Path(__file__).parent.parent / "venv_manager" / "proto"
    for name in ("venv_manager_pb2.py", "venv_manager_pb2.pyi", "venv_manager_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / name, committed / name, shallow=False), (
            f"{name} is out of step with protos/venv_manager.proto: "
            "run `python -m venv_manager.genproto`")


def test_ensure_env_builds_a_working_env_and_is_idempotent(server, six_env):
    stub = server[0]
    assert len(six_env.env_id) == 64 and "six==1.16.0" in six_env.lock
    assert six_env.python_version.startswith(SIX.python) and six_env.size_bytes > 0
    assert Path(six_env.python_path).is_file()
    # bytecode compiled: PYTHONDONTWRITEBYTECODE is set on these machines
    assert list(Path(six_env.python_path).parent.parent.rglob("six*.pyc"))
    again = stub.EnsureEnv(pb.EnvSpec(python=SIX.python, packages=["SIX == 1.16.0"],
                                      labels={"other": "label"}), metadata=AUTH)
    assert again.env_id == six_env.env_id  # normalized; labels are not identity
    got = stub.GetEnv(pb.EnvRef(env_id=six_env.env_id), metadata=AUTH)
    assert got.lock == six_env.lock
    listed = stub.ListEnvs(pb.ListEnvsRequest(), metadata=AUTH).envs
    assert six_env.env_id in [e.env_id for e in listed]
    lock = stub.ExportLock(pb.EnvRef(env_id=six_env.env_id), metadata=AUTH)
    assert "six==1.16.0" in lock.requirements


def test_run_code_in_the_env_with_timeout(server, six_env):
    stub = server[0]
    r = stub.RunCode(pb.RunCodeRequest(env_id=six_env.env_id, code="import six, sys; "
                                       "print(six.__version__, sys.prefix)"), metadata=AUTH)
    assert r.exit_code == 0 and r.stdout.startswith("1.16.0")
    assert six_env.env_id in r.stdout
    r = stub.RunCode(pb.RunCodeRequest(env_id=six_env.env_id, code="import time; "
                                       "time.sleep(30)", timeout_s=1), metadata=AUTH)
    assert r.timed_out and r.exit_code == -1


@pytest.mark.parametrize("bad", ["--index-url=https://evil.example/simple", "-e .",
                                 "x; rm -rf /", "./some/path", "", "six @ file:///tmp/six"])
def test_bad_package_strings_are_invalid_argument_naming_the_string(server, bad):
    stub, _, _, rest = server
    with pytest.raises(grpc.RpcError) as err:
        stub.EnsureEnv(pb.EnvSpec(python=SIX.python, packages=[bad]), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(bad) in err.value.details()
    r = httpx.post(f"{rest}/v1/envs", json={"python": SIX.python, "packages": [bad]},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and repr(bad) in r.json()["detail"]


def test_a_python_the_machine_lacks_is_a_clear_error_not_a_hang(server):
    t = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        server[0].EnsureEnv(pb.EnvSpec(python="3.99"), metadata=AUTH, timeout=120)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "creating a Python 3.99 venv failed" in err.value.details()
    assert time.monotonic() - t < 60


def test_token_is_required_on_grpc_and_rest(server):
    stub, _, _, rest = server
    with pytest.raises(grpc.RpcError) as err:
        stub.ListEnvs(pb.ListEnvsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError):
        stub.ListEnvs(pb.ListEnvsRequest(), metadata=[("authorization", "Bearer wrong")])
    assert httpx.get(f"{rest}/v1/envs").status_code == 401
    assert httpx.get(f"{rest}/v1/envs", headers={"Authorization": f"Bearer {TOKEN}"}).is_success


def test_health_and_reflection(server):
    _, channel, _, rest = server
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="wtb.venv.v1.VenvManager"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]))
    names = [s.name for a in answers for s in a.list_services_response.service]
    assert "wtb.venv.v1.VenvManager" in names
    assert httpx.get(f"{rest}/healthz").json() == {"status": "SERVING"}


def test_rest_mirror_serves_the_same_envs(server, six_env):
    rest, headers = server[3], {"Authorization": f"Bearer {TOKEN}"}
    got = httpx.get(f"{rest}/v1/envs/{six_env.env_id}", headers=headers).json()
    assert got["env_id"] == six_env.env_id and "six==1.16.0" in got["lock"]
    run = httpx.post(f"{rest}/v1/envs/{six_env.env_id}/run", headers=headers,
                     json={"code": "import six; print(six.__version__)"}).json()
    assert run["stdout"].strip() == "1.16.0"
    assert httpx.get(f"{rest}/v1/envs/{'0' * 64}", headers=headers).status_code == 404


def test_concurrent_asks_for_one_spec_build_it_once(server):
    stub = server[0]
    spec = pb.EnvSpec(python=SIX.python, packages=["six==1.15.0"])
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(
        stub.EnsureEnv(spec, metadata=AUTH, timeout=600).env_id)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 16 and len(set(ids)) == 1
    ops = stub.History(pb.HistoryRequest(env_id=ids[0], page_size=100), metadata=AUTH).operations
    assert [o.status for o in ops].count("built") == 1
    assert [o.status for o in ops].count("cached") == 15


def test_derive_delete_history_paging_and_cleanup(server, six_env):
    stub = server[0]
    derived = stub.DeriveEnv(pb.DeriveEnvRequest(base_env_id=six_env.env_id,
                                                 add=["packaging==24.1"], remove=["six"],
                                                 labels={"variant": "b"}), metadata=AUTH)
    assert "packaging==24.1" in derived.lock and not any(p.startswith("six==")
                                                          for p in derived.lock)
    labelled = stub.History(pb.HistoryRequest(label_key="variant", label_value="b"),
                            metadata=AUTH).operations
    assert labelled and all(o.labels["variant"] == "b" for o in labelled)
    first = stub.History(pb.HistoryRequest(page_size=2), metadata=AUTH)
    second = stub.History(pb.HistoryRequest(page_size=2, before_id=first.next_before_id),
                          metadata=AUTH)
    assert len(first.operations) == 2 and second.operations[0].id < first.operations[-1].id
    stub.DeleteEnv(pb.EnvRef(env_id=derived.env_id), metadata=AUTH)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetEnv(pb.EnvRef(env_id=derived.env_id), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    removed = stub.Cleanup(pb.CleanupRequest(idle_seconds=3600), metadata=AUTH).removed
    assert six_env.env_id not in removed  # used within the hour


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "venv_manager", "serve", "--host", "0.0.0.0",
                           "--no-token", "--data", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0 without a token (--no-token)" in proc.stderr


def test_a_build_killed_midway_leaves_no_half_env(tmp_path):
    proc, grpc_addr, _ = start_server(tmp_path / "vm", "--no-token")
    stub = pb_grpc.VenvManagerStub(grpc.insecure_channel(grpc_addr))
    spec = pb.EnvSpec(python=SIX.python, packages=["six==1.14.0"])
    future = stub.EnsureEnv.future(spec, timeout=600)
    envs = tmp_path / "vm" / "envs"
    deadline = time.monotonic() + 60
    while not list(envs.glob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(envs.glob(".tmp-*")), "the build never started"
    os.kill(proc.pid, signal.SIGKILL)  # the whole manager dies mid-build
    proc.wait()
    with pytest.raises(grpc.RpcError):
        future.result()
    proc, grpc_addr, _ = start_server(tmp_path / "vm", "--no-token")
    try:
        stub = pb_grpc.VenvManagerStub(grpc.insecure_channel(grpc_addr))
        assert stub.ListEnvs(pb.ListEnvsRequest()).envs == []  # nothing half-built is served
        env = stub.EnsureEnv(spec, timeout=600)
        r = stub.RunCode(pb.RunCodeRequest(env_id=env.env_id, code="import six"))
        assert r.exit_code == 0
        # and Cleanup removes what is idle (here: everything) and nothing half-built remains
        assert list(stub.Cleanup(pb.CleanupRequest(idle_seconds=0)).removed) == [env.env_id]
        assert stub.ListEnvs(pb.ListEnvsRequest()).envs == []
    finally:
        stop(proc)


@pytest.mark.slow
def test_an_address_that_does_not_answer_is_a_clear_error_within_seconds():
    t = time.monotonic()
    with pytest.raises(EnvError, match="venv manager at 127.0.0.1:9 did not answer"):
        VenvClient("127.0.0.1:9")
    assert time.monotonic() - t < 30


# -- History paging and Cleanup, as docs/venv_manager.md describes them (no env is built:
# envs are written the way a build leaves them, and the audit records directly) ----------


def _fake_env(store, env_id: str, idle_s: float) -> None:
    path = store.root / "envs" / env_id
    path.mkdir()
    (path / "spec.json").write_text(json.dumps(
        {"python_version": "3.11.0", "created_at": "2026-11-29T00:00:00+00:00", "spec": {}}))
    (path / "lock.txt").write_text("six==1.16.0\n")
    store.audit.upsert_env(env_id, {}, {}, "3.11.0", 0)
    at = datetime.fromtimestamp(time.time() - idle_s, UTC).isoformat()
    with store.audit.engine.begin() as conn:
        conn.execute(text("UPDATE envs SET last_used_at = :at WHERE env_id = :id"),
                     {"at": at, "id": env_id})


@pytest.fixture
def embedded(tmp_path):
    """An EnvStore served in this process (no token), and a stub over a real channel."""
    store = EnvStore(tmp_path / "vm")
    server, port = grpc_server(store, "127.0.0.1", 0, None)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield store, pb_grpc.VenvManagerStub(channel)
    channel.close()
    server.stop(None)


def test_history_pages_are_full_newest_first_and_the_last_says_so(embedded):
    store, stub = embedded
    labels = [{"variant": "a"}, {"variant": "b"}, {}]
    for i in range(250):
        store.audit.record("GetEnv", "e" * 64, labels[i % 3], "ok", 0.0)
    wanted = [o["id"] for o in store.audit.history(limit=1000)[0]
              if o["labels"] == {"variant": "a"}]
    assert len(wanted) == 84
    pages, before = [], 0
    while True:  # the label filter used to run after LIMIT: pages came back short or empty
        page = stub.History(pb.HistoryRequest(label_key="variant", label_value="a",
                                              page_size=40, before_id=before))
        pages.append([o.id for o in page.operations])
        if not page.next_before_id:
            break
        assert page.next_before_id == pages[-1][-1]
        before = page.next_before_id
    assert [len(p) for p in pages] == [40, 40, 4]
    assert [i for p in pages for i in p] == wanted  # newest first, none twice, none missed
    assert len(stub.History(pb.HistoryRequest()).operations) == 100  # page_size 0: 100
    exact = stub.History(pb.HistoryRequest(label_key="variant", label_value="a", page_size=84))
    assert len(exact.operations) == 84 and exact.next_before_id == 0  # nothing left
    rest = TestClient(app(store, None), base_url="http://127.0.0.1").get(
        "/v1/history", params={"label": "variant=a", "page_size": 40, "before_id": pages[0][-1]})
    assert [o["id"] for o in rest.json()["operations"]] == pages[1]
    assert rest.json()["next_before_id"] == pages[1][-1]


def test_cleanup_removes_idle_envs_and_dead_builds_never_one_in_use(embedded):
    store, stub = embedded
    old, recent, leased = "a" * 64, "b" * 64, "c" * 64
    _fake_env(store, old, idle_s=7200)
    _fake_env(store, recent, idle_s=60)
    _fake_env(store, leased, idle_s=7200)
    dead = store.root / "envs" / f".tmp-{'d' * 64}-x1"  # a killed builder's: its lock is free
    (dead / "venv").mkdir(parents=True)
    with store.lease(leased):
        removed = stub.Cleanup(pb.CleanupRequest(idle_seconds=3600)).removed
        assert list(removed) == [old]  # env ids only: the dead build is in the audit record
        assert not dead.exists()
        record = stub.History(pb.HistoryRequest(page_size=1)).operations[0]
        assert record.operation == "Cleanup" and dead.name in record.stdout.split()
        assert sorted(e.env_id for e in stub.ListEnvs(pb.ListEnvsRequest()).envs) == [
            recent, leased]
        # idle_seconds 0: every env not in use
        assert list(stub.Cleanup(pb.CleanupRequest(idle_seconds=0)).removed) == [recent]
    assert list(stub.Cleanup(pb.CleanupRequest(idle_seconds=0)).removed) == [leased]


def test_cleanup_leaves_an_env_used_after_it_looked(embedded, monkeypatch):
    """Idleness is checked again under the env's lock: an env handed out between the
    cleanup's look and its delete stays."""
    store, _ = embedded
    env_id = "a" * 64
    _fake_env(store, env_id, idle_s=7200)
    listed = store.list

    def list_then_use():  # the env is used right after the cleanup listed it
        envs = listed()
        store.audit.touch(env_id)
        return envs

    monkeypatch.setattr(store, "list", list_then_use)
    assert store.cleanup(3600) == []
    assert (store.root / "envs" / env_id).is_dir()
