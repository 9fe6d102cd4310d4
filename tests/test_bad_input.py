"""The bad inputs of a user's first hour (issue #12), as one table.

Each row is a mistake: a command (`python -m wtb_conf ...`, `wtb ...`, or a gRPC / HTTP call
to the venv manager), the setup it needs, and the fragments its message must contain: the
culprit (a YAML key, a package string, a path, an id) and what would be valid. Every row
checks that the message (stderr, or the gRPC details / HTTP body) has them and no traceback,
that the exit is non-zero (or the status is the expected one), and that the store (every file
under `data/`; for the venv manager its data dir) is byte for byte what it was. The rows
marked `records_failure` are job-time failures: a failing job is a recorded failure, never the
end of the sweep, so there the store changes; they check instead that one run is recorded
`failed` with an error naming the node, router or key and what was valid, that the sweep
exits 1 and lists it, and that `wtb fsck` is clean.

Every row runs in its own copy of one seeded project (the demo swept, then again as cache hits
until two run ids share a first digit), so no row depends on another's order or leftovers.
A row that fails today because of a product defect is a strict xfail saying what is wrong.
docs/reliability.md ("Bad input") lists the rows; the last test keeps the two in step.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import ROOT, copy_project, run_bench, wtb

from venv_manager.proto import venv_manager_pb2 as pb
from venv_manager.proto import venv_manager_pb2_grpc as pb_grpc

TESTS = Path(__file__).resolve().parent
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
TOKEN = "bad-input-token"

# `python -m wtb_conf -m` on the demo's workflow, one job (no sweep params): the config is the
# demo's, and one job is all a refused value needs
ONE_JOB = ("-m", "workflow=file_processing")

# A tiny workflow whose router returns a name that is not one of its targets
# (tests/flows.py: nowhere() returns "teleport").
ROUTE_WF = """\
state:
  x: int
  trail: {type: list, reducer: append}
nodes:
  add: {_target_: flows.add, amount: 1}
  double: {_target_: flows.double}
edges: [[START, add], [double, END]]
routes:
  add:
    router: {_target_: flows.nowhere}
    to: [double, END]
cases:
  one: {x: 1}
"""

# A tiny workflow whose node returns a list instead of a dict of state updates.
LISTY_WF = """\
state:
  x: int
nodes:
  add: {_target_: flows.add, amount: 1}
  listy: {_target_: badnodes.listy}
edges: [[START, add], [add, listy], [listy, END]]
cases:
  one: {x: 1}
"""
LISTY_PY = "def listy(state):\n    return [state['x']]\n"


def write(rel: str, text: str) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        for s in setups:
            s(project)
    return setup


def schema_99(project: Path) -> None:
    """The store as a newer wtb_conf left it: a migration this code does not know."""
    con = sqlite3.connect(project / "data/wtb.db")
    with con:
        con.execute("INSERT INTO wtb_migrations VALUES (99)")
    con.close()


def after_wtb_runs(project: Path) -> None:
    """A store as `wtb runs` leaves it: read-only commands leave an empty -wal and a -shm."""
    proc = run([*wtb_argv(), "runs"], project)
    assert proc.returncode == 0 and (project / "data/wtb.db-shm").exists(), proc.stderr


@dataclass
class VenvManager:
    """The venv manager under test: a real server (with a token) over real channels."""

    stub: pb_grpc.VenvManagerStub
    rest: str  # http://HOST:PORT
    data: Path  # its data dir: envs, locks, env_audit.db


def ensure(spec: pb.EnvSpec, metadata=()) -> Callable[[VenvManager], tuple[str, str]]:
    """EnsureEnv(spec) over gRPC -> (status code name, details)."""
    def call(vm: VenvManager) -> tuple[str, str]:
        try:
            vm.stub.EnsureEnv(spec, metadata=metadata, timeout=120)
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""
        return "OK", ""
    return call


def post_env(body: dict, headers: dict) -> Callable[[VenvManager], tuple[str, str]]:
    """POST /v1/envs over HTTP -> (status, body)."""
    def call(vm: VenvManager) -> tuple[str, str]:
        r = httpx.post(f"{vm.rest}/v1/envs", json=body, headers=headers, timeout=120)
        return str(r.status_code), r.text
    return call


@dataclass
class Row:
    id: str
    argv: tuple[str, ...]  # ("bench", ARGS...) | ("wtb", ARGS...) | ("grpc"|"http", WHAT)
    expect: tuple[str, ...]  # fragments of the message
    setup: Callable[[Path], None] | None = None
    records_failure: bool = False  # a runtime failure: recorded, the store changes
    readonly: bool = False  # data/ is mounted read-only for the command
    call: Callable[[VenvManager], tuple[str, str]] | None = None  # -> (status, message)
    status: str = ""  # the gRPC status code or HTTP status the call must get
    xfail: str = ""  # what is wrong today (a product defect); strict

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=self.xfail)] if self.xfail else []
        return pytest.param(self, id=self.id, marks=marks)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def spec(**kw) -> pb.EnvSpec:
    return pb.EnvSpec(**{"python": PY, "packages": ["six==1.16.0"], **kw})


ROWS = [
    # --- config files and groups -----------------------------------------------------------
    Row("yaml-syntax-error", ("bench", "-m", "workflow=broken"),
        ("broken.yaml", "line"),
        setup=write("conf/workflow/broken.yaml", "state:\n  x: int\nnodes: [unclosed\n")),
    Row("missing-workflow", ("bench", "-m"), ("You must specify 'workflow'", "file_processing")),
    Row("unknown-group", ("bench", *ONE_JOB, "foo=bar"), ("'foo'", "+foo=bar")),
    Row("unknown-option", ("bench", "-m", "workflow=nope"),
        ("Could not find 'workflow/nope'", "Available options", "file_processing")),
    Row("unknown-variant", ("bench", *ONE_JOB, "variant=nope"),
        ("Could not find 'variant/nope'", "drop_invalid")),
    # --- wrong types of workflow keys ------------------------------------------------------
    Row("workflow.edges-int", ("bench", *ONE_JOB, "workflow.edges=5"),
        ("workflow.edges", "list")),
    Row("workflow.state-list", ("bench", *ONE_JOB, "workflow.state=[1]"),
        ("workflow.state", "Cannot merge DictConfig with ListConfig")),
    Row("workflow.state-int", ("bench", *ONE_JOB, "workflow.state=5"),
        ("workflow.state", "mapping", "5")),
    Row("workflow.state-unknown-type", ("bench", *ONE_JOB, "workflow.state.rows=listt"),
        ("workflow.state.rows", "listt", "str")),
    Row("workflow.state-unknown-reducer", ("bench", *ONE_JOB, "workflow.state.log.reducer=sum"),
        ("workflow.state.log", "sum", "append")),
    Row("workflow.nodes-int", ("bench", *ONE_JOB, "workflow.nodes.load=3"),
        ("workflow.nodes.load", "_target_")),
    Row("workflow.metrics-str", ("bench", *ONE_JOB, "workflow.metrics=x"),
        ("workflow.metrics", "mapping")),
    Row("workflow.interrupt_before-int", ("bench", *ONE_JOB, "+workflow.interrupt_before=5"),
        ("workflow.interrupt_before", "list")),
    Row("workflow.interrupt_before-unknown-node",
        ("bench", *ONE_JOB, "+workflow.interrupt_before=[nonode]"),
        ("workflow.interrupt_before", "nonode", "load")),
    Row("workflow.cases-int", ("bench", *ONE_JOB, "workflow.cases=5"),
        ("workflow.cases", "mapping")),
    Row("edge-to-unknown-node", ("bench", *ONE_JOB, "workflow.edges=[[START,load],[load,ghost]]"),
        ("workflow.edges", "ghost", "load")),
    Row("route-to-unknown-node", ("bench", *ONE_JOB, "workflow.routes.validate.to=[nowhere]"),
        ("workflow.routes.validate.to", "nowhere", "quarantine")),
    Row("non-importable-target",
        ("bench", *ONE_JOB, "workflow.nodes.load._target_=nosuch.module.fn"),
        ("workflow.nodes.load._target_", "nosuch.module.fn")),
    Row("undeclared-state-field", ("bench", *ONE_JOB, "+workflow.cases.orders.nope=1"),
        ("workflow.cases.orders", "nope", "input_csv")),
    Row("compare.objective-unknown", ("bench", *ONE_JOB, "compare.objective=nope"),
        ("compare.objective", "nope", "success_rate")),
    Row("rerun-not-bool", ("bench", *ONE_JOB, "rerun=maybe"), ("rerun", "maybe")),
    # --- every job of a sweep checked at its start (issues #22, #27) ------------------------
    Row("sweep-target-typo", ("bench", "-m", "+experiment=demo",
                              "workflow.nodes.clean._target_=experiments.file_processing.nodes.clen"),
        ("workflow.nodes.clean._target_", "has no attribute 'clen'")),
    Row("sweep-objective-unknown", ("bench", "-m", "+experiment=demo", "compare.objective=nope"),
        ("compare.objective", "'nope'", "success_rate")),
    Row("sweep-bad-value-in-some-jobs", ("bench", *ONE_JOB, "compare.mode=max,best"),
        ("1 of 2 jobs [job 1 (compare.mode=best)]", "'best' is not one of max, min")),
    Row("unknown-top-level-key", ("bench", "-m", "+experiment=demo", "+compre.objective=kept.f1"),
        ("compre: unknown top-level key", "compare", "share_prefixes")),
    Row("evaluator-key-unknown", ("bench", *ONE_JOB, "workflow.evaluators.total_ok.key=nosuchkey"),
        ("workflow.evaluators.total_ok.key", "'nosuchkey' names no state field", "total_amount")),
    Row("metric-path-unknown", ("bench", *ONE_JOB, "+workflow.metrics.typo=n_tokenz"),
        ("workflow.metrics.typo", "'n_tokenz' names no state field", "rows_out")),
    Row("router-param-wrong-type", ("bench", "-m", "+experiment=demo",
                                    "workflow.routes.validate.router.max_invalid=abc"),
        ("workflow.routes.validate.router.max_invalid: 'abc' is not a float",)),
    Row("node-param-unknown", ("bench", *ONE_JOB, "+workflow.nodes.load.setings_file=x"),
        ("workflow.nodes.load.setings_file", "not a parameter", "settings_file")),
    Row("case-file-missing", ("bench", *ONE_JOB, "workflow.cases.orders.input_csv=nope.csv"),
        ("workflow.cases.orders.input_csv", "'nope.csv' does not exist")),
    Row("case-file-directory", ("bench", *ONE_JOB, "workflow.cases.orders.input_csv=conf"),
        ("workflow.cases.orders.input_csv", "'conf' is a directory")),
    Row("case-file-binary", ("bench", *ONE_JOB, "workflow.cases.orders.input_csv=bin.csv"),
        ("workflow.cases.orders.input_csv", "'bin.csv' is not UTF-8 text (byte 2"),
        setup=lambda project: (project / "bin.csv").write_bytes(b"\x00\x01\xff\xfe")),
    Row("value-100kb", ("bench", *ONE_JOB, "compare.objective=" + "v" * 100_000),
        ("compare.objective", "… (100002 characters) is not a metric")),
    Row("override-key-100kb", ("bench", *ONE_JOB, "k" * 100_000 + "=1"),
        ("an override key of 100000 characters", "at most 255")),
    # --- runtime failures: recorded, the sweep goes on ---------------------------------------
    Row("router-returns-non-target", ("bench", "-m", "workflow=tiny_route"),
        ("add", "teleport", "double"), records_failure=True,
        setup=write("conf/workflow/tiny_route.yaml", ROUTE_WF)),
    Row("node-returns-non-dict", ("bench", "-m", "workflow=tiny_listy"),
        ("workflow.nodes.listy", "not a dict"), records_failure=True,
        setup=both(write("conf/workflow/tiny_listy.yaml", LISTY_WF),
                   write("badnodes.py", LISTY_PY))),
    # --- fork ----------------------------------------------------------------------------
    Row("fork.run-not-an-id", ("bench", *ONE_JOB, "+fork.run=nosuchrun"),
        ("fork.run", "nosuchrun")),
    Row("fork.run-read-as-number", ("bench", *ONE_JOB, "+fork.run=12e34"),
        ("fork.run", "read as the number 1.2e+35", "+fork.run=\"'12e34'\"")),
    Row("fork.after-unknown-node", ("bench", *ONE_JOB, "+fork.run={run}", "+fork.after=nonode"),
        ("fork.after", "nonode", "load"), records_failure=True),
    Row("fork.run-unknown", ("bench", *ONE_JOB, "+fork.run=0000beef"),
        ("fork.run", "no run matches '0000beef'"), records_failure=True),
    Row("fork.pause-not-bool", ("bench", *ONE_JOB, "+fork.run={run}", "+fork.pause=maybe"),
        ("fork.pause", "maybe")),
    Row("fork-unknown-key", ("bench", *ONE_JOB, "+fork.run={run}", "+fork.bogus=1"),
        ("fork.bogus", "checkpoint")),
    # --- env -------------------------------------------------------------------------------
    Row("env.packages-malformed", ("bench", *ONE_JOB, "env.packages=['tabulate===']"),
        ("env.packages", "tabulate===")),
    Row("env.packages-injection", ("bench", *ONE_JOB, "env.packages=['x; rm -rf /']"),
        ("env.packages[0]", "'x; rm -rf /'", "PEP 508")),
    Row("env.python-banana", ("bench", *ONE_JOB, "env.python=banana"),
        ("env.python", "banana", "3.11")),
    Row("env.python-unquoted-number", ("bench", *ONE_JOB, "env.python=3.11"),
        ("env.python", "string")),
    # --- storage and launcher ----------------------------------------------------------------
    Row("storage.db_url-not-a-url", ("bench", *ONE_JOB, "storage.db_url=notaurl"),
        ("storage.db_url", "notaurl")),
    Row("storage.db_url-missing-dir",
        ("bench", *ONE_JOB, "storage.db_url=sqlite:///no/such/x.db"),
        ("no/such/x.db", "/no does not exist")),
    Row("storage.db_url-blocked-by-file",
        ("bench", *ONE_JOB, "storage.db_url=sqlite:///blocker/x.db"),
        ("blocker", "a file is in the way"), setup=write("blocker", "a file, not a directory\n")),
    Row("storage.inline_max-negative", ("bench", *ONE_JOB, "storage.inline_max=-1"),
        ("storage.inline_max", "-1")),
    Row("storage.db_url-other-database", ("bench", *ONE_JOB, "storage.db_url=mysql://u@h/db"),
        ("storage.db_url", "'mysql://u@h/db'", "sqlite:///", "postgresql+psycopg://")),
    Row("storage.db_url-other-driver",
        ("bench", *ONE_JOB, "storage.db_url=postgresql+psycopg2://u@h/db"),
        ("storage.db_url", "'psycopg2'", "postgresql+psycopg://")),
    Row("storage.db_url-unreachable",
        ("bench", *ONE_JOB, "storage.db_url=postgresql://nobody@127.0.0.1:1/wtb"),
        ("cannot open the store postgresql+psycopg://nobody@127.0.0.1:1/wtb",
         "Connection refused")),
    Row("storage.checkpoints-other-database",
        ("bench", *ONE_JOB, "storage.checkpoints=mysql://u@h/db"),
        ("storage.checkpoints", "'mysql://u@h/db' is not a SQLite file path or a "
         "postgresql:// URL", "data/checkpoints.db")),
    Row("storage.checkpoints-unreachable",
        ("bench", *ONE_JOB, "storage.checkpoints=postgresql://nobody@127.0.0.1:1/wtb"),
        ("storage.checkpoints", "cannot connect to the checkpointer "
         "postgresql://nobody@127.0.0.1:1/wtb", "Connection refused")),
    Row("storage.blob_root-unknown-protocol",
        ("bench", *ONE_JOB, "storage.blob_root=foo://bucket/blobs"),
        ("storage.blob_root", "'foo'", "s3://bucket/prefix")),
    Row("num_cpus-negative", ("bench", *ONE_JOB, "hydra.launcher.num_cpus=-1"),
        ("num_cpus", "-1")),
    Row("num_cpus-over-cpus", ("bench", *ONE_JOB, "hydra.launcher.num_cpus=64"),
        ("num_cpus", "64", "2 CPUs")),
    # --- the wtb CLI: store, ids, restore ----------------------------------------------------
    Row("wtb-db-not-a-url", ("wtb", "--db", "notaurl://", "runs"), ("notaurl://",)),
    Row("show-unknown-id", ("wtb", "show", "zzzz"), ("zzzz", "hexadecimal")),
    Row("log-unknown-id", ("wtb", "log", "zzzz"), ("zzzz", "hexadecimal")),
    Row("diff-unknown-id", ("wtb", "diff", "zzzz", "last"), ("zzzz",)),
    Row("show-no-such-run", ("wtb", "show", "0000beef"), ("no run matches", "0000beef")),
    Row("show-ambiguous-prefix", ("wtb", "show", "{ambig}"), ("'{ambig}'", "several runs")),
    Row("wtb-missing-store", ("wtb", "--db", "data/nope.db", "runs"),
        ("no store at data/nope.db", "--db")),
    Row("compare-unknown-sweep", ("wtb", "compare", "0000beef"), ("no sweep matches", "0000beef")),
    Row("runs-unknown-sweep", ("wtb", "runs", "--sweep", "0000beef"),
        ("no sweep matches", "0000beef")),
    Row("restore-to-non-empty-dir", ("wtb", "restore", "{run}", "--to", "taken"),
        ("taken", "empty"), setup=write("taken/keep.txt", "mine\n")),
    Row("restore-unknown-checkpoint",
        ("wtb", "restore", "{run}", "--checkpoint", "nosuch", "--to", "out"), ("nosuch",)),
    Row("rollback-unknown-checkpoint", ("wtb", "rollback", "{run}", "--checkpoint", "0000beef"),
        ("0000beef",)),
    Row("resume-set-unknown-field", ("wtb", "resume", "{run}", "--set", "nope=1"),
        ("nope", "input_csv")),
    Row("rerun-unknown-run", ("wtb", "rerun", "zzzz"), ("zzzz",)),
    Row("resume-completed-run", ("wtb", "resume", "{run}"),
        ("is completed", "only paused and failed runs resume", "wtb rollback")),
    Row("evaluate-non-importable-evaluator",
        ("wtb", "evaluate", "{run}", "workflow.evaluators.total_ok._target_=nosuch.fn"),
        ("workflow.evaluators.total_ok._target_", "nosuch.fn")),
    # --- a store that cannot be written -----------------------------------------------------
    Row("rerun-read-only-store", ("wtb", "rerun", "last"),
        ("cannot write the store", "read-only"), readonly=True),
    Row("sweep-read-only-store", ("bench", *ONE_JOB, "rerun=true"),
        ("cannot write the store", "read-only"), readonly=True),
    Row("rerun-read-only-store-after-wtb-runs", ("wtb", "rerun", "last"),
        ("cannot write the store", "read-only"), readonly=True, setup=after_wtb_runs),
    Row("sweep-read-only-store-after-wtb-runs", ("bench", *ONE_JOB, "rerun=true"),
        ("cannot write the store", "read-only"), readonly=True, setup=after_wtb_runs),
    Row("runs-schema-too-new", ("wtb", "runs"), ("99", "upgrade wtb_conf"), setup=schema_99),
    Row("sweep-schema-too-new", ("bench", *ONE_JOB), ("99", "upgrade wtb_conf"),
        setup=schema_99),
    # --- the venv manager's gRPC API ---------------------------------------------------------
    Row("grpc-missing-token", ("grpc", "EnsureEnv, no token"), ("token", "Bearer"),
        call=ensure(spec()), status="UNAUTHENTICATED"),
    Row("grpc-wrong-token", ("grpc", "EnsureEnv, token 'wrong'"), ("token", "Bearer"),
        call=ensure(spec(), (("authorization", "Bearer wrong"),)), status="UNAUTHENTICATED"),
    Row("grpc-oversized-package", ("grpc", "EnsureEnv, a 1 MB package string"),
        ("packages[0]", "1000000 characters", "at most"),
        call=ensure(spec(packages=["a" * 1_000_000]), AUTH), status="INVALID_ARGUMENT"),
    Row("grpc-malformed-package", ("grpc", "EnsureEnv, package 'six>=<1'"),
        ("'six>=<1'", "PEP 508"),
        call=ensure(spec(packages=["six>=<1"]), AUTH), status="INVALID_ARGUMENT"),
    Row("grpc-malformed-python", ("grpc", "EnsureEnv, python 'banana'"), ("'banana'", "'3.11'"),
        call=ensure(spec(python="banana"), AUTH), status="INVALID_ARGUMENT"),
    Row("grpc-oversized-python", ("grpc", "EnsureEnv, a 1 MB python version"),
        ("python", "1000004 characters", "'3.11'"),
        call=ensure(spec(python="3." + "1" * 1_000_000), AUTH), status="INVALID_ARGUMENT"),
    Row("http-missing-token", ("http", "POST /v1/envs, no token"), ("token",),
        call=post_env({"python": PY, "packages": ["six==1.16.0"]}, {}), status="401"),
    Row("http-malformed-package", ("http", "POST /v1/envs, package 'six>=<1'"),
        ("'six>=<1'", "PEP 508"),
        call=post_env({"python": PY, "packages": ["six>=<1"]},
                      {"Authorization": f"Bearer {TOKEN}"}), status="422"),
    # a web page reaching the loopback server: by DNS rebinding (its Host), or by fetch()
    Row("http-foreign-host", ("http", "POST /v1/envs, Host 'rebind.example'"),
        ("Host header", "'rebind.example'", "--allowed-host"),
        call=post_env({"python": PY, "packages": ["six==1.16.0"]},
                      {"Authorization": f"Bearer {TOKEN}", "Host": "rebind.example"}),
        status="403"),
    Row("http-browser-origin", ("http", "POST /v1/envs, Origin 'http://evil.example'"),
        ("Origin header", "'http://evil.example'", "--allowed-origin"),
        call=post_env({"python": PY, "packages": ["six==1.16.0"]},
                      {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}),
        status="403"),
    # --- loops and the bench's bounds on a run (issue #27) -----------------------------------
    Row("dead-end-cycle",
        ("bench", *ONE_JOB, "workflow.edges=[[START,load],[load,clean],[clean,validate],"
         "[quarantine,summarize],[summarize,load]]"),
        ("workflow.edges", "'summarize'] cannot reach END", "add an edge or route to END")),
    Row("workflow.recursion_limit-zero", ("bench", *ONE_JOB, "+workflow.recursion_limit=0"),
        ("workflow.recursion_limit", "0 is not an integer >= 1", "100")),
    Row("workflow.case_timeout_s-not-a-number",
        ("bench", *ONE_JOB, "+workflow.case_timeout_s=abc"),
        ("workflow.case_timeout_s", "'abc' is not a number of seconds > 0", "3600")),
    Row("workflow.max_checkpoints-negative", ("bench", *ONE_JOB, "+workflow.max_checkpoints=-5"),
        ("workflow.max_checkpoints", "-5 is not an integer >= 1", "10000")),
]


# --- helpers ------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root. SQLite's `-shm` (an index of the WAL, rebuilt by
    whoever opens the database next) and an empty `-wal` hold no data: a reader may leave them
    behind, and they are left out; a `-wal` with frames in it is data and counts."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(root).as_posix()
            if rel.endswith("-shm") or (rel.endswith("-wal") and not path.stat().st_size):
                continue
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def wtb_argv() -> list[str]:
    script = Path(sys.executable).parent / "wtb"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wtb_conf.cli"]


READ_ONLY = ["unshare", "-rm", "sh", "-c",
             'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"']


@functools.cache
def read_only_mounts() -> str:
    """'' when a directory can be made read-only for one command (a user namespace's bind
    mount), else why not."""
    try:
        proc = subprocess.run([*READ_ONLY, "/tmp", "true"], capture_output=True, text=True,
                              timeout=30)
    except OSError as e:
        return str(e)
    return "" if proc.returncode == 0 else proc.stderr.strip() or f"exit {proc.returncode}"


def needs_read_only_mounts() -> None:
    """Skipped where a user namespace cannot bind-mount; under CI that is a failure."""
    if why := read_only_mounts():
        message = f"cannot mount a read-only directory here (unshare -rm): {why}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def invoke(row_argv: tuple[str, ...], project: Path, readonly: bool
           ) -> subprocess.CompletedProcess:
    """A row's command: in a new process under a read-only mount of data/ (a namespace of its
    own), else forked warm like every other test's."""
    kind, *args = row_argv
    if readonly:
        argv = [sys.executable, "-m", "wtb_conf"] if kind == "bench" else wtb_argv()
        return run([*READ_ONLY, str(project / "data"), *argv, *args], project)
    if kind == "bench":
        return run_bench(project, *args, check=False, env=env_with_flows(), timeout=300)
    return wtb(project, *args, code=None, env=env_with_flows(), timeout=300)


def env_with_flows() -> dict[str, str]:
    """`flows` (tests/flows.py) imports in the job, as the launch dir's modules do."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env_with_flows())


def runs_of(project: Path) -> dict[str, tuple[str, str | None]]:
    """A plain connection: closing it, the last one, leaves no -wal/-shm behind (a read-only
    one would), so the rows start from a store as a finished sweep leaves it."""
    con = sqlite3.connect(project / "data/wtb.db")
    try:
        return {r[0]: (r[1], r[2]) for r in con.execute("SELECT id, status, error FROM runs")}
    finally:
        con.close()



def ambiguous_prefix(run_ids) -> str | None:
    firsts = [r[0] for r in run_ids]
    return next((c for c in sorted(set(firsts)) if firsts.count(c) > 1), None)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A project where the demo has been swept (4 runs), and swept again (4 cache hits) until
    two runs share a first hex digit: `wtb show X` is then ambiguous (16 runs guarantee it)."""
    project = copy_project(tmp_path_factory.mktemp("seed"))
    run_bench(project, "-m", "+experiment=demo")
    while (ambig := ambiguous_prefix(runs_of(project))) is None:
        run_bench(project, "-m", "+experiment=demo")
    for db in ("checkpoints.db", "wtb.db"):  # no WAL frames: the copies' files are the store
        con = sqlite3.connect(project / "data" / db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if db == "wtb.db":
            first = con.execute("SELECT id FROM runs WHERE status = 'completed' "
                                "ORDER BY started_at, job_num LIMIT 1").fetchone()[0]
        con.close()  # the last connection: no -wal/-shm left
    return project, {"run": first, "ambig": ambig}


@pytest.fixture(scope="module")
def venv_manager(tmp_path_factory):
    from test_venv_manager import start_server, stop

    data = tmp_path_factory.mktemp("vm")
    proc, grpc_addr, rest_addr = start_server(data, "--token", TOKEN)
    channel = grpc.insecure_channel(grpc_addr, options=[
        ("grpc.max_send_message_length", 8 << 20)])  # a 1 MB field must reach the server
    yield VenvManager(pb_grpc.VenvManagerStub(channel), f"http://{rest_addr}", data)
    channel.close()
    stop(proc)


def fill(text: str, names: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: names[m.group(1)], text)


def check_message(message: str, expect: tuple[str, ...]) -> None:
    assert "Traceback" not in message, message
    missing = [f for f in expect if f not in message]
    assert not missing, f"missing {missing} in:\n{message}"


# --- the table ------------------------------------------------------------------------------

@pytest.mark.parametrize("row", [r.param() for r in ROWS])
@pytest.mark.slow
def test_bad_input(row: Row, request, tmp_path):
    if row.call:
        vm = request.getfixturevalue("venv_manager")
        before = snapshot(vm.data)
        status, message = row.call(vm)
        assert status == row.status, message
        check_message(message, row.expect)
        assert snapshot(vm.data) == before
        return

    if row.readonly:
        needs_read_only_mounts()
    seed, names = request.getfixturevalue("seeded")
    project = tmp_path / "project"
    shutil.copytree(seed, project, symlinks=True)
    if row.setup:
        row.setup(project)
    before = snapshot(project / "data")
    runs_before = runs_of(project) if row.records_failure else {}
    expect = tuple(fill(f, names) for f in row.expect)
    proc = invoke(tuple(fill(a, names) for a in row.argv), project, row.readonly)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    if not row.records_failure:
        check_message(proc.stderr, expect)
        assert snapshot(project / "data") == before, output
        return

    # a job-time failure: the sweep exits 1 and lists it; one new run, failed, with an error
    # naming the culprit; the store is whole
    assert proc.returncode == 1, output
    check_message(proc.stderr, expect)
    new = {k: v for k, v in runs_of(project).items() if k not in runs_before}
    assert [status for status, _ in new.values()] == ["failed"], (new, output)
    [(_, error)] = new.values()
    check_message(error, expect)
    wtb(project, "fsck", env=env_with_flows())


@pytest.mark.slow
def test_read_only_commands_work_on_a_read_only_store(seeded, tmp_path):
    """The other half of a read-only store: what only reads must work there."""
    needs_read_only_mounts()
    seed, names = seeded
    project = tmp_path / "project"
    shutil.copytree(seed, project, symlinks=True)
    before = snapshot(project / "data")
    script = " && ".join(f"{shlex.join(wtb_argv())} {args} >/dev/null" for args in (
        "runs", "show last", "log last", f"diff {names['run']} last", "compare"))
    proc = run([*READ_ONLY, str(project / "data"), "sh", "-c", script], project)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(project / "data") == before


def test_the_docs_list_every_row():
    """docs/reliability.md's "Bad input" section counts and lists the rows of the table."""
    doc = (ROOT / "docs/reliability.md").read_text()
    section = doc.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert listed == [r.id for r in ROWS]
    assert f"{len(ROWS)} bad inputs" in section
    recorded = re.findall(r"^\| `([^`]+)` \|.*\| recorded \|$", section, flags=re.M)
    assert recorded == [r.id for r in ROWS if r.records_failure]
    open_rows = re.findall(r"^\| `([^`]+)` \|.*\*open:\*", section, flags=re.M)
    assert open_rows == [r.id for r in ROWS if r.xfail], "the doc's *open* rows are the xfails"
