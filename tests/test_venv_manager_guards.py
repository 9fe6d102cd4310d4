"""The venv manager's guards (issue 27 item 5): RunCode's output is capped, a token is the
default, REST checks Host and Origin, a planted symlink is never followed out of the data dir;
and the bench says what env it is asking for (issue 22 item 11).

Envs here are written the way a build leaves them, with the test's own interpreter as their
python (a link, as in a real venv), so no uv build is needed but for the bench's client test.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from test_venv_manager import start_server, stop

from venv_manager.access import AccessError, resolve_token
from venv_manager.capture import OUTPUT_CAP
from venv_manager.envs import EnvStore
from venv_manager.proto import venv_manager_pb2 as pb
from venv_manager.proto import venv_manager_pb2_grpc as pb_grpc
from venv_manager.rest import app
from venv_manager.server import grpc_server
from wtb_conf.driver.envs import _what, connect

ENV_ID = "e" * 64
MB = 1 << 20


def plant_env(data: Path, env_id: str = ENV_ID) -> Path:
    """A complete env in data/envs/ whose python is this interpreter."""
    path = data / "envs" / env_id
    (path / "venv" / "bin").mkdir(parents=True)
    (path / "venv" / "bin" / "python").symlink_to(sys.executable)
    (path / "spec.json").write_text(json.dumps(
        {"python_version": "3.11.0", "created_at": "2026-11-29T00:00:00+00:00", "spec": {}}))
    (path / "lock.txt").write_text("six==1.16.0\n")
    return path


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def vm_rss_peak(pid: int) -> int:
    """The process's peak resident set (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# -- 1. RunCode's output is capped; the audit keeps a head and a digest -------------------

BIG = 50 * MB
WRITE = ("import sys; chunk = b'x' * (1 << 20); "
         f"[sys.stdout.buffer.write(chunk) for _ in range({BIG // MB})]; "
         "sys.stderr.write('e' * 3_000_000)")


def test_run_code_output_is_capped_with_a_marker_and_the_audit_row_is_small(tmp_path):
    data = tmp_path / "vm"
    plant_env(data)
    proc, grpc_addr, rest_addr = start_server(data, "--no-token")
    try:
        stub = pb_grpc.VenvManagerStub(grpc.insecure_channel(grpc_addr))
        stub.ListEnvs(pb.ListEnvsRequest())  # the server's own start, before the peak is read
        peak = vm_rss_peak(proc.pid)
        r = stub.RunCode(pb.RunCodeRequest(env_id=ENV_ID, code=WRITE, timeout_s=300),
                         timeout=600)
        assert r.exit_code == 0 and not r.timed_out
        assert r.stdout == "x" * OUTPUT_CAP + f"\n… [truncated: {BIG - OUTPUT_CAP} bytes more]"
        assert r.stderr.endswith(f"\n… [truncated: {3_000_000 - OUTPUT_CAP} bytes more]")
        # read in chunks, the rest only hashed: the server never held the 50 MB (it held 1 GB
        # for 200 MB before)
        assert vm_rss_peak(proc.pid) - peak < 20 * MB
        rest = httpx.post(f"http://{rest_addr}/v1/envs/{ENV_ID}/run", timeout=600,
                          json={"code": "print('y' * 3_000_000)"}).json()
        assert rest["stdout"].endswith(f"[truncated: {3_000_001 - OUTPUT_CAP} bytes more]")
        [op] = stub.History(pb.HistoryRequest(page_size=2)).operations[1:]
        assert op.operation == "RunCode"
        assert op.stdout_sha256 == hashlib.sha256(b"x" * BIG).hexdigest()
        assert op.stdout_bytes == BIG and op.stderr_bytes == 3_000_000
        assert op.stderr_sha256 == hashlib.sha256(b"e" * 3_000_000).hexdigest()
        assert len(op.stdout) < 70_000 and "bytes more]" in op.stdout  # a head, and the marker
    finally:
        stop(proc)
    assert sum(p.stat().st_size for p in data.glob("env_audit.db*")) < 2 * MB


def test_binary_output_is_capped_in_bytes_and_fits_one_grpc_answer(tmp_path):
    store = EnvStore(tmp_path / "vm")
    plant_env(store.root)
    server, port = grpc_server(store, "127.0.0.1", 0, None)
    try:
        stub = pb_grpc.VenvManagerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        code = ("import sys; sys.stdout.buffer.write(b'\\xff' * (3 << 20)); "
                "sys.stderr.buffer.write('é'.encode() + b'\\xfe' * (3 << 20))")
        r = stub.RunCode(pb.RunCodeRequest(env_id=ENV_ID, code=code), timeout=120)
    finally:
        server.stop(None)
    assert r.stdout == "?" * OUTPUT_CAP + f"\n… [truncated: {(3 << 20) - OUTPUT_CAP} bytes more]"
    assert r.stderr.startswith("é???")  # valid UTF-8 is kept as it is
    assert len(r.stderr.encode()) < OUTPUT_CAP + 100


def test_a_run_that_times_out_is_killed_with_what_it_started(tmp_path):
    store = EnvStore(tmp_path / "vm")
    plant_env(store.root)
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(600)']); print(p.pid, flush=True); time.sleep(600)")
    r = store.run_code(ENV_ID, code, timeout_s=2)
    assert r.timed_out and r.exit_code == -1
    grandchild = int(r.stdout)
    # its process group was killed: the grandchild goes too (it would sleep 10 minutes)
    deadline = time.monotonic() + 60
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)


# -- 2. a token by default; Host and Origin ---------------------------------------------

def test_a_token_is_made_on_first_start_kept_0600_and_required_by_both_apis(tmp_path):
    data = tmp_path / "vm"
    proc, grpc_addr, rest_addr = start_server(data)
    try:
        token_file = data / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 40
        stub = pb_grpc.VenvManagerStub(grpc.insecure_channel(grpc_addr))
        with pytest.raises(grpc.RpcError) as err:
            stub.ListEnvs(pb.ListEnvsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ListEnvs(pb.ListEnvsRequest(),
                             metadata=[("authorization", f"Bearer {token}")]).envs == []
        assert httpx.get(f"http://{rest_addr}/v1/envs").status_code == 401
        assert httpx.get(f"http://{rest_addr}/v1/envs",
                         headers={"Authorization": f"Bearer {token}"}).json() == []
    finally:
        stop(proc)
    proc, *_ = start_server(data)  # a restart keeps the token
    stop(proc)
    assert (data / "token").read_text().strip() == token


def test_no_token_is_the_old_behaviour_and_refused_beyond_loopback(tmp_path):
    data = tmp_path / "vm"
    proc, grpc_addr, _ = start_server(data, "--no-token")
    try:
        stub = pb_grpc.VenvManagerStub(grpc.insecure_channel(grpc_addr))
        assert stub.ListEnvs(pb.ListEnvsRequest()).envs == []
    finally:
        stop(proc)
    assert not (data / "token").exists()
    with pytest.raises(AccessError, match="--token and --no-token contradict"):
        resolve_token("t", True, data)


@pytest.mark.parametrize(("mode", "message"), [(0o644, "is mode 0644"), (0o600, "is empty")])
def test_a_token_file_others_can_read_or_an_empty_one_is_refused(tmp_path, mode, message):
    (tmp_path / "token").write_text("" if mode == 0o600 else "abc\n")
    (tmp_path / "token").chmod(mode)
    with pytest.raises(AccessError, match=message):
        resolve_token(None, False, tmp_path)


def test_the_bench_reads_the_token_of_the_manager_it_starts_and_of_one_by_address(tmp_path):
    data = tmp_path / "vm"
    with connect(None, None, data) as client:
        assert client.stub.ListEnvs(pb.ListEnvsRequest(), metadata=client.metadata).envs == []
    assert (data / "token").is_file()
    proc, grpc_addr, _ = start_server(data)  # started by hand on the same data dir
    try:
        with connect(grpc_addr, None, data) as client:
            assert client.stub.ListEnvs(pb.ListEnvsRequest(),
                                        metadata=client.metadata).envs == []
    finally:
        stop(proc)


HOSTS = [  # (Host header, allowed hosts, refused)
    ("127.0.0.1:10900", (), False), ("localhost:10900", (), False), ("[::1]:10900", (), False),
    ("LOCALHOST", (), False), ("127.0.0.2", (), False), ("evil.example:10900", (), True),
    ("evil.example", ("evil.example",), False), ("attacker.test", ("*",), False),
    ("127.0.0.1.evil.example", (), True), ("", (), True),
]


@pytest.mark.parametrize(("host", "allowed", "refused"), HOSTS)
def test_rest_refuses_a_host_it_does_not_answer_to(tmp_path, host, allowed, refused):
    rest = TestClient(app(EnvStore(tmp_path), None, "127.0.0.1", allowed_hosts=allowed))
    r = rest.get("/v1/envs", headers={"host": host})
    if refused:
        assert r.status_code == 403
        assert r.json()["detail"].startswith(f"Host header {host!r} is not allowed")
        assert "--allowed-host" in r.json()["detail"]
    else:
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(("origin", "allowed", "refused"), [
    ("http://evil.example", (), True), ("null", (), True), ("http://127.0.0.1:10900", (), True),
    ("http://ok.example", ("http://ok.example/",), False), ("http://x.test", ("*",), False)])
def test_rest_refuses_a_browser_origin_unless_configured(tmp_path, origin, allowed, refused):
    rest = TestClient(app(EnvStore(tmp_path), None, allowed_origins=allowed),
                      base_url="http://127.0.0.1:10900")
    r = rest.post("/v1/cleanup", params={"idle_seconds": 0}, headers={"origin": origin})
    if refused:
        assert r.status_code == 403
        assert r.json()["detail"].startswith(f"Origin header {origin!r} is not allowed")
    else:
        assert r.status_code == 200, r.text


def test_a_dns_rebinding_request_to_the_real_server_is_refused(tmp_path):
    proc, _, rest_addr = start_server(tmp_path / "vm", "--no-token")
    try:
        r = httpx.post(f"http://{rest_addr}/v1/envs", json={"python": "3.11"},
                       headers={"Host": f"rebind.evil.example:{rest_addr.rsplit(':', 1)[1]}"})
        assert r.status_code == 403 and "Host header" in r.json()["detail"]
        r = httpx.post(f"http://{rest_addr}/v1/envs", json={"python": "3.11"},
                       headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "Origin header" in r.json()["detail"]
    finally:
        stop(proc)
    assert list((tmp_path / "vm" / "envs").iterdir()) == []


# -- 3. a planted symlink is never followed out of the data dir ----------------------------

@pytest.fixture
def planted(tmp_path):
    """A data dir whose envs/<id> is a link to a complete-looking env outside it."""
    store = EnvStore(tmp_path / "vm")
    outside = plant_env(tmp_path / "outside")
    (store.root / "envs" / ENV_ID).symlink_to(outside)
    return store, outside


def test_delete_of_a_planted_symlink_removes_the_link_only(planted):
    store, outside = planted
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    r = TestClient(app(store, None), base_url="http://127.0.0.1").delete(f"/v1/envs/{ENV_ID}")
    assert r.status_code == 200, r.text  # was a 500
    assert os.listdir(store.root / "envs") == []  # no link, no `-deleting` link left
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before
    record = store.audit.history(limit=1)[0][0]
    assert record["operation"] == "DeleteEnv" and "removed the link only" in record["stderr"]


def test_a_planted_symlink_is_not_served_run_or_listed(planted):
    store, _ = planted
    server, port = grpc_server(store, "127.0.0.1", 0, None)
    try:
        stub = pb_grpc.VenvManagerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert stub.ListEnvs(pb.ListEnvsRequest()).envs == []
        for rpc, request in (("GetEnv", pb.EnvRef(env_id=ENV_ID)),
                             ("RunCode", pb.RunCodeRequest(env_id=ENV_ID, code="print(1)"))):
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, rpc)(request, timeout=60)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(None)


def test_a_leftover_deleting_link_or_a_planted_lock_link_is_handled(tmp_path):
    store = EnvStore(tmp_path / "vm")
    plant_env(store.root)
    target = tmp_path / "precious"
    target.write_text("keep me")
    # a `-deleting` link left by the old code: it no longer blocks a delete
    (store.root / "envs" / f".tmp-{ENV_ID}-deleting").symlink_to(tmp_path)
    store.delete(ENV_ID)
    assert os.listdir(store.root / "envs") == [] and target.read_text() == "keep me"
    # a lock file planted as a link: refused, never truncated or followed
    plant_env(store.root)
    (store.root / "locks" / f"{ENV_ID}.lock").unlink()
    (store.root / "locks" / f"{ENV_ID}.lock").symlink_to(target)
    rest = TestClient(app(store, None), base_url="http://127.0.0.1")
    r = rest.delete(f"/v1/envs/{ENV_ID}")
    assert r.status_code == 409 and "symbolic link there is refused" in r.json()["detail"]
    assert target.read_text() == "keep me"


# -- 4. the bench says what it is asking for, and when it is there -------------------------

def test_the_bench_says_what_env_it_asks_for_and_when_it_is_ready(tmp_path, capsys):
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    spec = pb.EnvSpec(python=python, packages=["six==1.16.0"])
    with connect(None, None, tmp_path / "vm") as client:
        env = client.ensure(spec, "job #0 (env=six)")
        first = capsys.readouterr().out
        client.ensure(spec, "job #0 (env=six)")
        again = capsys.readouterr().out
    assert first.splitlines()[0] == (
        f"env for job #0 (env=six): python {python}, six==1.16.0: asking the venv manager, "
        "which builds it with uv if it is new...")
    ready = first.splitlines()[1]
    assert ready.startswith(f"env {env.env_id[:12]} (python {python}, six==1.16.0) ready in ")
    assert ready.endswith(" s (built with uv)")
    assert again.splitlines()[1].endswith(" s (it had it)")
    # the bench's runtime is left out of what is said: it is the same in every env
    assert _what(pb.EnvSpec(python="3.11", packages=["tabulate==0.8.10", "ray==2.60.0",
                                                     "hydra-core==1.3.2"])) == (
        "python 3.11, tabulate==0.8.10")
