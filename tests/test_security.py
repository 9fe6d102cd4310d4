"""Security: no shell anywhere, nothing a user or a stored row names leaves its root, the store
never runs what it stores, and the venv manager refuses what it must (issue #12).

The venv manager is served in-process here (`grpc_server` over a real port, the REST app
through FastAPI's test client): every refusal below crosses a real channel, and no env is
built (a refused spec never reaches uv).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sqlite3
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from conftest import ROOT, run_bench
from fastapi.testclient import TestClient
from sqlalchemy import text

from venv_manager.envs import EnvStore
from venv_manager.proto import venv_manager_pb2 as pb
from venv_manager.proto import venv_manager_pb2_grpc as pb_grpc
from venv_manager.rest import app
from venv_manager.server import check_listen, grpc_server
from wtb_conf.cli import main as wtb
from wtb_conf.store import ObjectCorrupted, UnsafePath, open_store

SCANNED = ("wtb_conf", "venv_manager", "hydra_plugins", "benchmarks")
# module -> functions that run a command through a shell
SHELL_CALLS = {"os": {"system", "popen"}, "subprocess": {"getoutput", "getstatusoutput"},
               "pty": {"spawn"}, "asyncio": {"create_subprocess_shell"}}


def _sources(*tops: str) -> list[Path]:
    """Our .py files under `tops`: not a virtualenv a benchmark made for itself (.venv-*)."""
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py")
                  if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def _shell_uses(path: Path) -> list[str]:
    """`file:line: what` for every shell use in a file: a call with `shell=` anything but a
    literal False, a call or import of one of SHELL_CALLS."""
    tree = ast.parse(path.read_bytes(), str(path))
    found = []
    where = path.relative_to(ROOT)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                              and kw.value.value is False):
                    found.append(f"{where}:{node.lineno}: shell={ast.unparse(kw.value)}")
            f = node.func
            if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                    and f.attr in SHELL_CALLS.get(f.value.id, ())):
                found.append(f"{where}:{node.lineno}: {f.value.id}.{f.attr}()")
        elif isinstance(node, ast.ImportFrom) and node.module in SHELL_CALLS:
            for alias in node.names:
                if alias.name in SHELL_CALLS[node.module]:
                    found.append(f"{where}:{node.lineno}: from {node.module} import "
                                 f"{alias.name}")
    return found


def test_the_scan_finds_every_form_of_shell(tmp_path, monkeypatch):
    """The scanner itself, on a file holding each form (and forms that are fine)."""
    sample = tmp_path / "sample.py"
    sample.write_text(textwrap.dedent("""\
        import os, subprocess, pty, asyncio
        from subprocess import getoutput
        subprocess.run("ls", shell=True)
        subprocess.Popen(["ls"], shell=flag)
        os.system("ls")
        os.popen("ls")
        subprocess.getstatusoutput("ls")
        pty.spawn("sh")
        asyncio.create_subprocess_shell("ls")
        subprocess.run(["ls"], shell=False)  # fine
        # os.system("in a comment") is fine, and so is "shell=True" in a string
    """))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [u.split(": ", 1)[1] for u in _shell_uses(sample)] == [
        "from subprocess import getoutput", "shell=True", "shell=flag", "os.system()",
        "os.popen()", "subprocess.getstatusoutput()", "pty.spawn()",
        "asyncio.create_subprocess_shell()"]


def test_no_shell_anywhere():
    files = _sources(*SCANNED)
    assert len(files) > 30  # the scan sees the tree
    uses = [u for path in files for u in _shell_uses(path)]
    assert not uses, "a shell is used (pass an argument list instead):\n" + "\n".join(uses)


# Modules and builtins that run or load code: the store holds user data and must never
# hand it to any of them (LangGraph's checkpoint serializer is LangGraph's own business).
CODE_RUNNERS = {"subprocess", "pickle", "marshal", "shelve", "dill", "cloudpickle", "importlib",
                "runpy", "pty"}
CODE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def test_the_store_imports_nothing_that_runs_or_unpickles_what_it_holds():
    found = []
    for path in _sources("wtb_conf/store"):
        for node in ast.walk(ast.parse(path.read_bytes())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            found += [f"{path.name}:{node.lineno}: import {n}" for n in names
                      if n in CODE_RUNNERS]
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in CODE_BUILTINS) or (
                    isinstance(node, ast.Attribute) and node.attr in ("system", "execv")):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:60]}")
    assert not found, "\n".join(found)


@pytest.fixture
def store(tmp_path):
    with open_store(str(tmp_path / "wtb.db"), tmp_path / "blobs", inline_max=64) as s:
        yield s


def _counts(store) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                     for t in ("commits", "blobs", "stat_cache"))


def test_a_restored_executable_keeps_its_mode_and_is_not_run(store, tmp_path):
    marker = tmp_path / "ran"
    src = tmp_path / "src"
    src.mkdir()
    script = src / "run.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    (src / "hook.py").write_text(f"open({str(marker)!r}, 'w')\n")
    commit = store.commit_dir(src)
    store.restore(commit, tmp_path / "back")
    assert (tmp_path / "back/run.sh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "back/run.sh").read_bytes() == script.read_bytes()
    assert not marker.exists()


@pytest.mark.parametrize("rel", ["/etc/passwd", "../outside.txt", "a/../../outside.txt",
                                 "./a.txt", "a//b.txt", "", "a/", "a\\..\\b", "out/a.txt"])
def test_commit_dir_refuses_named_files_that_leave_its_root(store, tmp_path, rel):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a.txt").write_text("in")
    (tmp_path / "outside.txt").write_text("secret")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/a.txt").write_text("secret")
    (root / "out").symlink_to(tmp_path / "elsewhere")  # a directory link leading out
    before = _counts(store)
    with pytest.raises(UnsafePath) as err:
        store.commit_dir(root, files=["a.txt", rel])
    assert repr(rel) in str(err.value)
    assert _counts(store) == before


def test_commit_dir_stores_a_named_link_as_a_link_and_files_under_plain_dirs(store, tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub/data.csv").write_text("x\n")
    (root / "out").symlink_to(tmp_path)  # named itself: stored as a link, never followed
    tree = store.tree(store.commit_dir(root, files=["sub/data.csv", "out"]))
    assert sorted(tree) == ["out", "sub/data.csv"] and tree["out"].mode == 0o120000


@pytest.mark.parametrize("bad_id", ["../../../../outside", "/etc/passwd", "ab/../../x",
                                    "A" * 64, "0" * 63 + "/"])
def test_a_blob_id_that_is_not_a_digest_never_names_a_file(store, tmp_path, bad_id):
    """A forged tree entry (and a blobs row to match it) cannot make the store open a path:
    only a SHA-256 hex digest names a file under objects/."""
    (tmp_path / "outside").write_text("secret")
    tree = json.dumps({"format": 1, "entries": [["f.txt", bad_id, 6, 0o644]]}).encode()
    tree_id = hashlib.sha256(tree).hexdigest()
    commit = "c" * 64
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO blobs (id, size, data) VALUES (:id, 6, NULL)"),
                     {"id": bad_id})
        conn.execute(text("INSERT INTO blobs (id, size, data) VALUES (:id, :s, :d)"),
                     {"id": tree_id, "s": len(tree), "d": tree})
        conn.execute(text("INSERT INTO commits (id, tree, parent, message, created_at) "
                          "VALUES (:id, :t, NULL, '', '')"), {"id": commit, "t": tree_id})
    with pytest.raises(ObjectCorrupted, match="is not a SHA-256 hex digest") as err:
        store.restore(commit, tmp_path / "dest")
    assert repr(bad_id) in str(err.value)
    assert not (tmp_path / "dest").exists()
    with pytest.raises(ObjectCorrupted, match="is not a SHA-256 hex digest"):
        store.read_blob(bad_id)


# -- ids and case names from the command line and configs --------------------------------


def _store_bytes(db: Path) -> bytes:
    with sqlite3.connect(db) as conn:  # checkpointed: the WAL's pages are in the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.read_bytes()


@pytest.mark.parametrize("command", ["show", "log", "diff", "restore"])
@pytest.mark.parametrize("ref", ["'; DROP TABLE runs; --", "$(touch marker)", "../../etc",
                                 "%", "_"])
def test_a_run_id_that_is_sql_or_shell_is_unknown_and_the_store_unchanged(
        tmp_path, monkeypatch, capsys, command, ref):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "wtb.db"
    with open_store(str(db), tmp_path / "blobs") as s:
        sweep = s.create_sweep([])
        run_id = s.start_run(sweep, 0, [], "wf", "{}", "d", "/tmp/job")
        s.finish_run(run_id, "completed", None)
    before = _store_bytes(db)
    args = {"show": [ref], "log": [ref], "diff": [ref, run_id], "restore": [ref, "--to", "x"]}
    code = wtb(["--db", str(db), "--blobs", str(tmp_path / "blobs"), command,
                *args[command]])
    err = capsys.readouterr().err
    assert code != 0 and repr(ref) in err, err
    assert "not an id" in err or "no run matches" in err or "neither a run" in err, err
    assert _store_bytes(db) == before
    assert not (tmp_path / "marker").exists() and not (tmp_path / "x").exists()


ESCAPE = """
state: {x: int}
nodes:
  work: {_target_: esc.work}
edges: [[START, work], [work, END]]
cases: {CASES}
"""

ESC_NODES = """
from pathlib import Path

def work(state, **_):
    Path("written.txt").write_text("here")
    return {"x": state["x"] + 1}
"""


@pytest.fixture
def escape_project(tmp_path) -> Path:
    project = tmp_path / "project"
    (project / "conf/workflow").mkdir(parents=True)
    (project / "esc.py").write_text(ESC_NODES)
    return project


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "."])
def test_a_case_name_that_leaves_the_jobs_out_dir_fails_the_job_naming_it(escape_project,
                                                                          name):
    project = escape_project
    (project / "conf/workflow/esc.yaml").write_text(
        ESCAPE.replace("{CASES}", json.dumps({name: {"x": 1}})))
    proc = run_bench(project, "-m", "workflow=esc", "hydra/launcher=basic", check=False)
    assert proc.returncode == 1
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as s:
        (run,) = s.runs()
    assert run["status"] == "failed" and "workflow.cases" in run["error"]
    assert repr(name) in run["error"]
    assert not list(project.rglob("written.txt"))  # no node ran, in or out of the job dir
    assert not list(project.parent.rglob("escape"))


def test_a_case_named_like_a_shell_command_is_only_a_name(escape_project):
    project = escape_project
    name = "$(touch pwned)"
    (project / "conf/workflow/esc.yaml").write_text(
        ESCAPE.replace("{CASES}", json.dumps({name: {"x": 1}})))
    run_bench(project, "-m", "workflow=esc", "hydra/launcher=basic")
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as s:
        (run,) = s.runs()
        assert [t["thread_id"] for t in s.threads(run["run_id"])] == [f"{run['run_id']}/{name}"]
    (written,) = project.rglob("written.txt")
    assert written.parent.name == name and written.parent.parent.name == "out"
    assert not list(project.parent.rglob("pwned"))


# -- the venv manager ------------------------------------------------------------------

TOKEN = "s3cret-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def venv_store(tmp_path_factory) -> EnvStore:
    return EnvStore(tmp_path_factory.mktemp("vm"))


@pytest.fixture(scope="module")
def stub(venv_store):
    server, port = grpc_server(venv_store, "127.0.0.1", 0, TOKEN)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.VenvManagerStub(channel)
    channel.close()
    server.stop(None)


@pytest.fixture(scope="module")
def rest(venv_store):
    return TestClient(app(venv_store, TOKEN), base_url="http://127.0.0.1")


@pytest.mark.parametrize(("host", "token", "refused"), [
    ("127.0.0.1", None, False), ("::1", None, False), ("localhost", None, False),
    ("127.0.0.2", None, False), ("0.0.0.0", None, True), ("::", None, True),
    ("192.168.1.5", None, True), ("example.com", None, True), ("0.0.0.0", "t", False)])
def test_only_loopback_is_served_without_a_token(host, token, refused):
    if refused:
        with pytest.raises(SystemExit, match=f"refusing to listen on {host} without a token"):
            check_listen(host, token)
    else:
        assert check_listen(host, token) is None  # no SystemExit: it may listen there


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=60, **kwargs)
    return err.value.code(), err.value.details()


EVERY_RPC = [("EnsureEnv", pb.EnvSpec(python=PY)), ("GetEnv", pb.EnvRef(env_id="0" * 64)),
             ("ListEnvs", pb.ListEnvsRequest()), ("DeleteEnv", pb.EnvRef(env_id="0" * 64)),
             ("ExportLock", pb.EnvRef(env_id="0" * 64)),
             ("DeriveEnv", pb.DeriveEnvRequest(base_env_id="0" * 64)),
             ("RunCode", pb.RunCodeRequest(env_id="0" * 64, code="print(1)")),
             ("Cleanup", pb.CleanupRequest(idle_seconds=0)), ("History", pb.HistoryRequest())]


@pytest.mark.parametrize("metadata", [None, [("authorization", "Bearer wrong")],
                                      [("authorization", TOKEN)],  # no "Bearer "
                                      [("authorization", f"Bearer {TOKEN}x")]],
                         ids=["missing", "wrong", "no-scheme", "longer"])
@pytest.mark.parametrize(("rpc", "request_"), EVERY_RPC, ids=[r for r, _ in EVERY_RPC])
def test_every_rpc_without_the_right_token_is_unauthenticated(stub, venv_store, rpc, request_,
                                                              metadata):
    before = list(venv_store.root.joinpath("envs").iterdir())
    code, details = _code(getattr(stub, rpc), request_, metadata=metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in details
    assert list(venv_store.root.joinpath("envs").iterdir()) == before


def test_rest_without_the_right_token_is_401_with_a_clear_body(rest):
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": "Bearer caf\xe9".encode("latin-1")}):  # was a 500
        r = rest.get("/v1/envs", headers=headers)
        assert r.status_code == 401
        assert r.json() == {"detail": "missing or wrong token: send 'Authorization: Bearer "
                                      "<token>'"}
    assert rest.get("/healthz").status_code == 200  # health needs no token


@pytest.mark.parametrize("template", ["x; rm -rf {marker}", "--index-url=http://evil",
                                      "-e .", "$(touch {marker})", "`touch {marker}`",
                                      "six==1.16.0 && touch {marker}", "six|touch {marker}",
                                      "six @ file://{marker}"])
@pytest.mark.parametrize("field", ["packages", "constraints"])
def test_injection_through_a_package_string_is_refused_naming_it(stub, rest, tmp_path,
                                                                 template, field):
    marker = tmp_path / "marker"
    bad = template.format(marker=marker)
    spec = pb.EnvSpec(python=PY, **{field: [bad]})
    code, details = _code(stub.EnsureEnv, spec, metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: {bad!r}"), details
    r = rest.post("/v1/envs", json={"python": PY, field: [bad]},
                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}: {bad!r}")
    assert not marker.exists()


MALFORMED = [
    ("python", pb.EnvSpec(), "python: missing"),  # an empty spec
    ("python", pb.EnvSpec(python="banana"), "python 'banana': expected a version"),
    ("python", pb.EnvSpec(python="3.11; rm -rf /"), "python '3.11; rm -rf /'"),
    ("packages", pb.EnvSpec(python=PY, packages=["six"] * 10_000),
     "packages: 10000 entries; at most 500"),
    ("packages", pb.EnvSpec(python=PY, packages=["a" * (1 << 20)]),
     "packages[0]: 1048576 characters"),
    ("constraints", pb.EnvSpec(python=PY, constraints=[""]), "constraints: '' is empty"),
    ("index_url", pb.EnvSpec(python=PY, index_url="file:///etc"), "index_url 'file:///etc'"),
    ("extra_index_urls", pb.EnvSpec(python=PY, extra_index_urls=["http://a b"]),
     "extra_index_urls 'http://a b'"),
    ("labels", pb.EnvSpec(python=PY, labels={f"k{i}": "v" for i in range(600)}),
     "labels: 600 entries"),
    ("labels", pb.EnvSpec(python=PY, labels={"k": "v" * 5000}),
     "labels (values)[0]: 5000 characters"),
]


@pytest.mark.parametrize(("field", "spec", "message"), MALFORMED,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(MALFORMED)])
def test_malformed_spec_fields_are_invalid_argument_naming_the_field(stub, field, spec,
                                                                     message):
    code, details = _code(stub.EnsureEnv, spec, metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field) and message in details, details
    assert len(details) < 1000  # names the value; does not echo a megabyte of it


@pytest.mark.parametrize(("rpc", "request_", "message"), [
    ("History", pb.HistoryRequest(page_size=-1), "page_size -1: expected 1 to 1000"),
    ("History", pb.HistoryRequest(page_size=100_000), "page_size 100000"),
    ("History", pb.HistoryRequest(before_id=-5), "before_id -5"),
    ("Cleanup", pb.CleanupRequest(idle_seconds=-1), "idle_seconds -1.0"),
    ("Cleanup", pb.CleanupRequest(idle_seconds=float("nan")), "idle_seconds nan"),
])
def test_malformed_request_fields_are_invalid_argument_naming_the_field(stub, rpc, request_,
                                                                        message):
    code, details = _code(getattr(stub, rpc), request_, metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(message), details


def test_rest_answers_malformed_requests_with_422_naming_the_field(rest):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = rest.post("/v1/envs", json={"packages": ["six"]}, headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "python"]
    r = rest.post("/v1/envs", json={"python": "banana"}, headers=headers)
    assert r.status_code == 422 and r.json()["detail"].startswith("python 'banana'")
    r = rest.get("/v1/history", params={"label": "novalue"}, headers=headers)
    assert r.status_code == 422 and r.json()["detail"] == "label 'novalue': expected KEY=VALUE"
    r = rest.get("/v1/history", params={"page_size": 0}, headers=headers)
    assert r.status_code == 422 and r.json()["detail"].startswith("page_size 0")
    r = rest.post("/v1/cleanup", params={"idle_seconds": -3}, headers=headers)
    assert r.status_code == 422 and r.json()["detail"].startswith("idle_seconds -3")
    r = rest.post("/v1/cleanup", headers=headers)  # the parameter is required
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "idle_seconds"]


@pytest.mark.parametrize("env_id", ["../../etc", "..", "0" * 63 + "/", "$(touch x)"])
def test_an_env_id_is_a_digest_or_names_nothing(stub, venv_store, env_id):
    for rpc in ("GetEnv", "DeleteEnv", "ExportLock"):
        code, details = _code(getattr(stub, rpc), pb.EnvRef(env_id=env_id), metadata=AUTH)
        assert code == grpc.StatusCode.NOT_FOUND and repr(env_id) in details
    assert os.listdir(venv_store.root / "envs") == []
