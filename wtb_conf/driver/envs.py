"""Client side of the venv manager: one job's `env` config -> an EnvSpec -> an interpreter.

The bench talks to venv_manager only over gRPC (the proto is all they share). With no address
configured, `connect()` starts a manager of its own on a free loopback port and stops it after.
A manager requires a token by default, kept in its data dir's `token` file (mode 0600): the
bench reads it there for the manager it starts, and for one named by address when no token is
configured (a manager started by hand on the project's `data/venv_manager`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
from hydra.errors import CompactHydraException

from venv_manager.proto import venv_manager_pb2 as pb
from venv_manager.proto import venv_manager_pb2_grpc as pb_grpc
from wtb_conf.config.models import EnvConfig, check
from wtb_conf.storage import StorageSpec

CONNECT_TIMEOUT_S = 10  # a configured manager that does not answer within this is an error
START_TIMEOUT_S = 60
ENSURE_TIMEOUT_S = 1800  # a cold build of ray and friends from PyPI

# What an actor's interpreter needs besides the user's packages, pinned to the driver's
# versions: Ray must match exactly, and the job code runs the same libraries as the driver.
RUNTIME = ("ray", "hydra-core", "omegaconf", "langgraph", "langgraph-checkpoint-sqlite",
           "sqlalchemy", "rich")
# ... and what the job's store needs: PostgreSQL's client and checkpointer, fsspec for an
# object-store blob root (only then: they are not small, and most envs run on SQLite)
POSTGRES_RUNTIME = ("psycopg", "psycopg-binary", "psycopg-pool", "langgraph-checkpoint-postgres")
FSSPEC_RUNTIME = ("fsspec", "s3fs")
TOKEN_FILE = "token"  # the manager's token, in its data dir (venv_manager/access.py)


def read_token(data_dir: Path) -> str | None:
    """The token a manager keeps in `data_dir`, or None when it keeps none there."""
    try:
        return (data_dir / TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as e:
        raise EnvError(f"cannot read the venv manager's token {data_dir / TOKEN_FILE}: "
                       f"{e.strerror}") from None


def _what(spec: pb.EnvSpec) -> str:
    """'python 3.11, tabulate==0.8.10': the spec as the user wrote it (the runtime aside)."""
    runtime = {*RUNTIME, *POSTGRES_RUNTIME, *FSSPEC_RUNTIME}
    own = [p for p in spec.packages if p.split("==")[0] not in runtime]
    return ", ".join([f"python {spec.python}", *own])


def runtime_for(storage: StorageSpec | None) -> tuple[str, ...]:
    """The distributions an env's job needs to run against `storage` (the job's)."""
    names = RUNTIME
    if storage is not None and (storage.sqlite_file is None or storage.postgres_checkpoints):
        names += POSTGRES_RUNTIME
    if storage is not None and "://" in storage.blob_root:
        names += FSSPEC_RUNTIME
    return names


class EnvError(CompactHydraException):
    """An env that cannot be provided; the message names the job and the packages. (Compact:
    Hydra prints the message alone, without a stack trace.)"""


def driver_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def spec_for(env_cfg: Any, labels: Mapping[str, str], job: str,
             storage: StorageSpec | None = None) -> pb.EnvSpec:
    """The EnvSpec for a job: its packages plus the runtime (for its `storage`) at the
    driver's exact versions."""
    env = check(EnvConfig, env_cfg, "env", error=lambda message: EnvError(f"{job}: {message}"))
    python = env.python or driver_python()
    if python.split(".")[:2] != driver_python().split("."):
        raise EnvError(
            f"{job}: env.python={python} but the driver runs Python {driver_python()}; Ray needs "
            f"the same minor version in every process: set env.python to {driver_python()} "
            "(or leave it null)"
        )
    runtime = [f"{name}=={version(name)}" for name in runtime_for(storage)]
    return pb.EnvSpec(python=python, packages=[*(env.packages or []), *runtime],
                      index_url=env.index_url or "",
                      extra_index_urls=env.extra_index_urls or [],
                      labels={k: str(v) for k, v in labels.items()})


class VenvClient:
    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        try:
            grpc.channel_ready_future(self.channel).result(timeout=CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise EnvError(f"the venv manager at {address} did not answer within "
                           f"{CONNECT_TIMEOUT_S} s; is `python -m venv_manager serve` running "
                           "there?") from None
        self.stub = pb_grpc.VenvManagerStub(self.channel)

    def ensure(self, spec: pb.EnvSpec, job: str) -> pb.Env:
        """The env for `spec`, saying what is asked and when it is there: a first build with
        uv takes half a minute, and without a terminal nothing else is printed meanwhile."""
        print(f"env for {job}: {_what(spec)}: asking the venv manager, which builds it with "
              "uv if it is new...", flush=True)
        t0, started = time.monotonic(), datetime.now().astimezone()
        try:
            env = self.stub.EnsureEnv(spec, metadata=self.metadata, timeout=ENSURE_TIMEOUT_S)
        except grpc.RpcError as e:
            hint = ""
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                hint = ("\nset hydra.launcher.planner.venv_manager_token to the manager's token "
                        f"(it keeps it in its data dir's {TOKEN_FILE} file)")
            raise EnvError(f"{job}: the venv manager could not provide an env with "
                           f"{', '.join(spec.packages)}:\n{e.details()}{hint}") from None
        try:
            built = datetime.fromisoformat(env.created_at) >= started  # (its clock, if remote)
        except ValueError:
            built = False
        print(f"env {env.env_id[:12]} ({_what(spec)}) ready in {time.monotonic() - t0:.1f} s"
              + (" (built with uv)" if built else " (it had it)"), flush=True)
        return env

    def check_interpreter(self, env: pb.Env, job: str) -> list[str]:
        """Run `import ray` in the env (an actor whose interpreter lacks Ray hangs silently);
        its sys.path, from which a planner reads the env's lock."""
        reply = self.stub.RunCode(
            pb.RunCodeRequest(env_id=env.env_id, timeout_s=120,
                              code="import json, ray, sys; print(ray.__version__); "
                                   "print(json.dumps(sys.path))"),
            metadata=self.metadata, timeout=180)
        found = reply.stdout.split()[0] if reply.stdout else ""
        if reply.exit_code != 0 or found != version("ray"):
            raise EnvError(f"{job}: env {env.env_id[:12]} ({env.python_path}) cannot run an "
                           f"actor: it has Ray {found or 'missing'}, the cluster runs "
                           f"{version('ray')}\n{reply.stderr.strip()}")
        return json.loads(reply.stdout.splitlines()[1])

    def close(self) -> None:
        self.channel.close()


def start_manager(data_dir: Path, die_with_parent: bool = False, token: str = "",
                  ) -> tuple[subprocess.Popen, str, Any]:
    """`python -m venv_manager serve` on a free loopback port with its data in `data_dir`:
    (process, gRPC address, its log file). `die_with_parent`: killed when this process dies
    (a node's agent: a manager must not outlive the Ray worker that started it). `token`:
    required of every caller (a node's manager lives as long as the node, and RunCode runs
    code: no other local user may call it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "manager.log", "a")  # noqa: SIM115 (the caller closes it)
    serve = ["-m", "venv_manager", "serve", "--grpc-port", "0", "--rest-port", "-1",
             "--data", str(data_dir)]
    if die_with_parent:  # PR_SET_PDEATHSIG, set in the child, kept across its exec
        serve = ["-c", "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
                       "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])", *serve]
    proc = subprocess.Popen([sys.executable, *serve], stdout=subprocess.PIPE, stderr=log,
                            text=True, env={**os.environ, "VENV_MANAGER_TOKEN": token})
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not line or "grpc=" not in line[0]:
        proc.kill()
        log.close()
        raise EnvError("the embedded venv manager did not start; see "
                       f"{data_dir / 'manager.log'}:\n"
                       + (data_dir / "manager.log").read_text()[-2000:])
    return proc, line[0].split("grpc=")[1].split()[0], log



@contextlib.contextmanager
def connect(address: str | None, token: str | None, data_dir: Path) -> Iterator[VenvClient]:
    """A client for the manager at `address`, or for one started here (and stopped after)."""
    if address:
        client = VenvClient(address, token or read_token(data_dir))
        try:
            yield client
        finally:
            client.close()
        return
    proc, address, log = start_manager(data_dir)
    try:  # its token, made on its first start in data_dir (its own, only it can read it)
        client = VenvClient(address, read_token(data_dir))
    except BaseException:
        proc.kill()
        log.close()
        raise
    try:
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def bench_path(root: Path) -> Path:
    """wtb_conf and its Hydra plugins (every `hydra_plugins/wtb_*`: the job's pickled Hydra
    state names them all), linked into `root` (new): an env's workers get these on their path
    without this interpreter's site-packages (and its other packages)."""
    import hydra_plugins.wtb_conf_launcher as launcher
    import wtb_conf

    plugins = Path(launcher.__file__).parent.parent
    (root / "hydra_plugins").mkdir(parents=True)
    (root / "wtb_conf").symlink_to(Path(wtb_conf.__file__).parent)
    for path in sorted(plugins.glob("wtb_*/__init__.py")):
        (root / "hydra_plugins" / path.parent.name).symlink_to(path.parent)
    return root


# -- on a node of a cluster: its agent (hydra_plugins.wtb_conf_launcher._nodes) runs these
ENVS_ROOT = "WTB_ENVS_ROOT"  # a node's venv manager data dir; default below
_node: dict[str, Any] = {}  # this process's manager, client and bench path, once started
_node_lock = threading.Lock()


def envs_root() -> Path:
    """Where this node's envs live: $WTB_ENVS_ROOT, else ~/.cache/wtb_conf/venv_manager (kept
    across Ray restarts: an env is content-addressed, so a kept one is as good as new)."""
    root = os.environ.get(ENVS_ROOT)
    return Path(root) if root else Path.home() / ".cache" / "wtb_conf" / "venv_manager"


def _node_client() -> VenvClient:
    with _node_lock:
        proc = _node.get("proc")
        if proc is None or proc.poll() is not None:  # first use, or the manager died
            if proc is not None:
                _node["client"].close()
                _node["log"].close()
            token = secrets.token_hex(16)
            proc, address, log = start_manager(envs_root(), die_with_parent=True, token=token)
            _node.update(proc=proc, log=log, client=VenvClient(address, token))
            if "bench" not in _node:
                _node["bench"] = str(bench_path(Path(tempfile.mkdtemp(
                    prefix="wtb-bench-path-"))))
        return _node["client"]


def provide_on_node(spec: bytes, job: str) -> tuple[str, list[str], dict[str, str]]:
    """The env of a serialized EnvSpec on this node, built or found by the node's own venv
    manager (started on first use): (python, its path for the bench, env vars for the job).
    `job` names the first job that wanted it, for messages."""
    from wtb_conf.job.admission import ENV_ID

    client = _node_client()
    env = client.ensure(pb.EnvSpec.FromString(spec), job)
    client.check_interpreter(env, job)
    return env.python_path, [_node["bench"]], {ENV_ID: env.env_id}
