"""Build, find, run in and remove environments. Every operation goes to the audit database.

Layout under the data dir:

    envs/<env_id>/venv/        the virtualenv (uv, relocatable, bytecode compiled)
    envs/<env_id>/spec.json    its normalized spec; envs/<env_id>/lock.txt its exact versions
    envs/.tmp-<env_id>-<rand>/ a build in progress (or a delete): renamed into place only
                               when complete, and verified (its python ran) before that
    locks/<env_id>.lock        flock held while one process builds or deletes that env
    env_audit.db

An env directory exists only complete, so a crash mid-build never leaves a half env that
gets served. The build's flock is what tells a live build from a dead one: the kernel drops
it when the builder dies (kill -9 included), and the builder's uv processes inherit it, so
a uv that outlives its killed manager still counts as building. A .tmp- directory whose
env's flock is free is a dead builder's leftover: the next build of that env and cleanup()
remove it at once, whatever its age.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from venv_manager.audit import Audit
from venv_manager.capture import AUDIT_HEAD, OUTPUT_CAP, run_capped
from venv_manager.spec import EnvSpec, InvalidSpec

UV_TIMEOUT_S = 900  # a cold install of a large package set; past this, report and give up
MAX_RUN_S = 3600.0  # RunCode's longest timeout: a check of an env, not a job


class EnvNotFound(KeyError):
    def __str__(self) -> str:
        return f"no env {self.args[0]!r}; list them with ListEnvs"


class EnvInUse(RuntimeError):
    pass


class BuildFailed(RuntimeError):
    """uv refused the spec (a conflict, a missing package or Python); stderr says why."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message + (f"\n{stderr.strip()}" if stderr.strip() else ""))
        self.stderr = stderr


@dataclass
class Env:
    env_id: str
    python_path: str
    python_version: str
    lock: list[str]
    status: str
    created_at: str
    last_used_at: str
    size_bytes: int
    spec: dict
    labels: dict


@dataclass
class RunResult:
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool


def _uv() -> str:
    from uv import find_uv_bin  # the `uv` PyPI package ships the binary

    return find_uv_bin()


def _is_env_id(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _complete(path: Path) -> bool:
    """An env directory as a build leaves it. Never through a symbolic link: an entry planted
    in envs/ must not make the manager serve, run or delete what lies outside its data dir."""
    return not path.is_symlink() and path.is_dir() and (path / "spec.json").is_file()


@contextlib.contextmanager
def _open_lock(path: Path) -> Iterator[int]:
    """A lock file's descriptor, opened without following a link (a planted link would have
    the lock truncate or create whatever it points to) and without truncating."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise EnvInUse(f"cannot open the lock {path}: {e.strerror} (a symbolic link there is "
                       "refused; remove it)") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_symlink())


class EnvStore:
    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.root = Path(data_dir).absolute()
        (self.root / "envs").mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        self.audit = Audit(self.root / "env_audit.db")
        self.uv = _uv()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._in_use: Counter[str] = Counter()
        self._known: set[str] = set()  # envs this process has seen complete on disk
        self._loaded: dict[str, tuple[dict, str]] = {}  # env_id -> (spec.json, lock.txt)
        self.builds = 0  # builds this process ran (the single-flight test and benchmark read it)

    def _dir(self, env_id: str) -> Path:
        if not _is_env_id(env_id):
            raise EnvNotFound(env_id)  # ids are digests; anything else names no directory
        return self.root / "envs" / env_id

    def _lock_path(self, env_id: str) -> Path:
        return self.root / "locks" / f"{env_id}.lock"

    def _thread_lock(self, env_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(env_id, threading.Lock())

    @contextlib.contextmanager
    def _single_flight(self, env_id: str) -> Iterator[int]:
        """One build per env id: a thread lock within this process, flock across processes.
        Yields the locked file's descriptor, which the build hands down to uv."""
        with self._thread_lock(env_id), _open_lock(self._lock_path(env_id)) as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd

    def _staging(self, env_id: str = "") -> list[Path]:
        """The .tmp- directories of builds and deletes (of one env, or of all)."""
        return sorted((self.root / "envs").glob(f".tmp-{env_id}*"))

    def _remove_dead_staging(self, env_id: str) -> tuple[list[str], list[str]]:
        """Remove env_id's staging dirs if no live process builds or deletes it (its flock is
        free): (names removed, problems met). The flock is taken without waiting and held
        while removing, so a build that starts meanwhile waits for a clean slate."""
        with _open_lock(self._lock_path(env_id)) as fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return [], []  # a live builder (or its orphaned uv) holds it: in use
            doomed = self._staging(env_id)
            problems = _remove_all(doomed)
            return [p.name for p in doomed if not p.exists()], problems

    def _load(self, env_id: str) -> Env:
        path = self._dir(env_id)
        if env_id not in self._loaded:  # the files never change: read them once
            if not _complete(path):
                raise EnvNotFound(env_id)
            self._loaded[env_id] = (json.loads((path / "spec.json").read_text()),
                                    (path / "lock.txt").read_text())
        meta, lock = self._loaded[env_id]
        row = self.audit.env_row(env_id) or {}
        return Env(
            env_id=env_id,
            python_path=str(path / "venv" / "bin" / "python"),
            python_version=meta["python_version"],
            lock=lock.split(),
            status="in_use" if self._in_use[env_id] else "ready",
            created_at=row.get("created_at", meta["created_at"]),
            last_used_at=row.get("last_used_at", meta["created_at"]),
            size_bytes=row.get("size_bytes", 0),
            spec=meta["spec"],
            labels=json.loads(row["labels"]) if row.get("labels") else {},
        )

    def _run_uv(self, args: list[str], what: str, lock_fd: int) -> subprocess.CompletedProcess:
        # No shell: the arguments go to uv as a list, and every package string was validated.
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}  # unreachable here: fail, not hang
        # uv inherits the build's flock (pass_fds): if this manager is killed alone, its uv
        # runs on as an orphan writing into the staging dir, and must keep the build "live"
        # until it exits, or cleanup() or a new build would pull the dir from under it.
        proc = subprocess.run([self.uv, *args], capture_output=True, text=True, env=env,
                              timeout=UV_TIMEOUT_S, pass_fds=(lock_fd,))
        if proc.returncode != 0:
            raise BuildFailed(f"{what} failed (uv exit {proc.returncode})", proc.stderr)
        return proc

    def _build(self, spec: EnvSpec, lock_fd: int) -> tuple[str, str]:
        """Build in a staging dir, verify, rename into place. The caller holds the env's lock,
        so any staging dir of this env already there is a dead builder's: remove it first."""
        env_id = spec.env_id
        _remove_all(self._staging(env_id))  # what will not go, cleanup() reports; no obstacle
        tmp = Path(tempfile.mkdtemp(dir=self.root / "envs", prefix=f".tmp-{env_id}-"))
        log = []
        try:
            venv = tmp / "venv"
            log.append(self._run_uv(["venv", "--relocatable", "--python", spec.python, str(venv)],
                                    f"creating a Python {spec.python} venv", lock_fd))
            python = str(venv / "bin" / "python")
            if spec.packages:
                args = ["pip", "install", "--python", python, "--compile-bytecode"]
                if spec.index_url:
                    args += ["--index-url", spec.index_url]
                for url in spec.extra_index_urls:
                    args += ["--extra-index-url", url]
                if spec.constraints:
                    (tmp / "constraints.txt").write_text("\n".join(spec.constraints) + "\n")
                    args += ["--constraint", str(tmp / "constraints.txt")]
                log.append(self._run_uv([*args, "--", *spec.packages],
                                        f"installing {', '.join(spec.packages)}", lock_fd))
            lock = self._run_uv(["pip", "freeze", "--python", python], "freezing the lock",
                                lock_fd)
            # The verification: the env's own python runs (and says which it is).
            version = subprocess.run(
                [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                capture_output=True, text=True, check=True, timeout=60, pass_fds=(lock_fd,),
            ).stdout.strip()
            (tmp / "lock.txt").write_text(lock.stdout)
            (tmp / "spec.json").write_text(json.dumps(
                {"spec": spec.identity(), "python_version": version,
                 "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
            os.replace(tmp, self._dir(env_id))  # the env appears complete or not at all
            self.builds += 1
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return "".join(p.stdout for p in log), "".join(p.stderr for p in log)

    def ensure(self, spec: EnvSpec) -> Env:
        """The env for `spec`, built once however many callers ask at the same time."""
        t0 = time.perf_counter()
        env_id = spec.env_id
        labels = dict(spec.labels)
        if env_id in self._known:  # the hot path: one small audit transaction
            self.audit.record("EnsureEnv", env_id, labels, "cached", time.perf_counter() - t0,
                              touch=True)
            return self._load(env_id)
        status, out, err = "cached", "", ""
        try:
            if not _complete(self._dir(env_id)):
                with self._single_flight(env_id) as lock_fd:
                    if not _complete(self._dir(env_id)):
                        out, err = self._build(spec, lock_fd)
                        status = "built"
            if self.audit.env_row(env_id) is None:
                meta = json.loads((self._dir(env_id) / "spec.json").read_text())
                self.audit.upsert_env(env_id, spec.identity(), labels, meta["python_version"],
                                      _size(self._dir(env_id)))
        except BuildFailed as e:
            self.audit.record("EnsureEnv", env_id, labels, "failed", time.perf_counter() - t0,
                              out, e.stderr)
            raise
        self.audit.record("EnsureEnv", env_id, labels, status, time.perf_counter() - t0, out,
                          err, touch=True)
        self._known.add(env_id)
        return self._load(env_id)

    def get(self, env_id: str) -> Env:
        env = self._load(env_id)
        self.audit.record("GetEnv", env_id, env.labels, "ok", 0.0)
        return env

    def list(self) -> list[Env]:
        # Only complete envs: staging dirs start with "." and anything else is not ours.
        ids = [p.name for p in (self.root / "envs").iterdir()
               if _is_env_id(p.name) and _complete(p)]
        self.audit.record("ListEnvs", None, {}, "ok", 0.0, "\n".join(sorted(ids)))
        return [self._load(i) for i in sorted(ids)]

    @contextlib.contextmanager
    def lease(self, env_id: str) -> Iterator[Env]:
        """Mark the env in use while the block runs: cleanup() and delete() leave it alone.
        Taken under the lock delete() holds, so a delete either finds it in use or ends
        before the env is loaded (then EnvNotFound)."""
        with self._thread_lock(env_id):
            env = self._load(env_id)
            self._in_use[env_id] += 1
        try:
            self.audit.touch(env_id)
            yield env
        finally:
            with self._thread_lock(env_id):
                self._in_use[env_id] -= 1

    def delete(self, env_id: str, unused_since: float | None = None) -> None:
        """Remove the env. `unused_since` (Cleanup's cutoff): only if it was last used before
        then, checked under the lock, so an env handed out since the cleanup looked stays."""
        t0 = time.perf_counter()
        path = self._dir(env_id)
        with self._single_flight(env_id):
            if self._in_use[env_id]:
                raise EnvInUse(f"env {env_id} is in use; delete it when its jobs are done")
            row = self.audit.env_row(env_id) if unused_since is not None else None
            if row and datetime.fromisoformat(row["last_used_at"]).timestamp() >= unused_since:
                raise EnvInUse(f"env {env_id} was used since the cleanup began")
            if path.is_symlink():  # planted: remove the link alone, never what it points to
                path.unlink()
                self._known.discard(env_id)
                self._loaded.pop(env_id, None)
                self.audit.forget_env(env_id)
                self.audit.record("DeleteEnv", env_id, {}, "deleted", time.perf_counter() - t0,
                                  stderr=f"{path} was a symbolic link: removed the link only")
                return
            if not path.is_dir():
                raise EnvNotFound(env_id)
            # Rename first: a crash mid-delete leaves a .tmp- dir, never a half env. One left
            # by a delete that died would block the rename; we hold the lock, so it is dead.
            doomed = path.with_name(f".tmp-{env_id}-deleting")
            _remove_all([doomed])
            os.replace(path, doomed)
            self._known.discard(env_id)
            self._loaded.pop(env_id, None)
            shutil.rmtree(doomed)
            self.audit.forget_env(env_id)
        self.audit.record("DeleteEnv", env_id, {}, "deleted", time.perf_counter() - t0)

    def export_lock(self, env_id: str) -> str:
        env = self._load(env_id)
        self.audit.record("ExportLock", env_id, env.labels, "ok", 0.0)
        return "\n".join(env.lock) + "\n"

    def run_code(self, env_id: str, code: str, timeout_s: float = 30) -> RunResult:
        """Run a Python snippet in the env (as `python -c`, no shell), with a timeout. Its
        stdout and stderr come back cut at OUTPUT_CAP bytes each, with a marker saying how
        many more it wrote (capture.py)."""
        if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_RUN_S):
            raise InvalidSpec(f"timeout_s {timeout_s}: expected seconds, more than 0 and at "
                              f"most {MAX_RUN_S}")
        t0 = time.perf_counter()
        with self.lease(env_id) as env:
            out, err, code, timed_out = run_capped([env.python_path, "-c", code], timeout_s,
                                                   self.root)
        result = RunResult(out.text(OUTPUT_CAP), err.text(OUTPUT_CAP), code, timed_out)
        status = "timeout" if timed_out else ("ok" if code == 0 else "error")
        # the audit keeps a head of each stream, and the digest and size of all of it
        self.audit.record("RunCode", env_id, env.labels, status, time.perf_counter() - t0,
                          out.text(AUDIT_HEAD), err.text(AUDIT_HEAD), code, streams=(out, err))
        return result

    def cleanup(self, idle_s: float) -> list[str]:
        """Remove envs unused for longer than idle_s (never one in use), and at once every
        staging dir no live process builds in (a killed builder's leftovers). Returns the
        env ids removed; the audit record also names the staging dirs. idle_s 0 removes
        every env not in use."""
        if not (math.isfinite(idle_s) and idle_s >= 0):
            raise InvalidSpec(f"idle_seconds {idle_s}: expected seconds, 0 or more")
        t0 = time.perf_counter()
        dead, problems = [], []
        for env_id in sorted({p.name[len(".tmp-"):][:64] for p in self._staging()}):
            if _is_env_id(env_id):  # any other .tmp- name is not ours to judge
                names, trouble = self._remove_dead_staging(env_id)
                dead += names
                problems += trouble
        removed = []
        cutoff = time.time() - idle_s
        for env in self.list():
            used = datetime.fromisoformat(env.last_used_at).timestamp()  # stamps carry their zone
            if used < cutoff and not self._in_use[env.env_id]:
                with contextlib.suppress(EnvInUse, EnvNotFound):
                    self.delete(env.env_id, unused_since=cutoff)
                    removed.append(env.env_id)
        self.audit.record("Cleanup", None, {}, "error" if problems else "ok",
                          time.perf_counter() - t0, "\n".join(removed + dead),
                          "\n".join(problems))
        return removed


def _remove_all(paths: list[Path]) -> list[str]:
    """rmtree each path; the problems met, each naming its path (empty when all went)."""
    problems = []
    for path in paths:
        try:
            if path.is_symlink():  # rmtree refuses a link; unlink removes it, not its target
                path.unlink()
            else:
                shutil.rmtree(path)
        except FileNotFoundError:
            pass  # removed meanwhile: what we wanted
        except OSError as e:
            problems.append(f"cannot remove {path}: {e}")
    return problems
