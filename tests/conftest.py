"""Shared fixtures. The demo sweep runs once per session, for real, in a copy of the project."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import warm
from pgserver import PgServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def ray_auth():
    """Every sweep takes the user's default path: a local Ray is started when a job needs one
    (a job in an env, `local_workers=false`) and stopped at exit. Ray 2.60 turns token auth on
    and writes ~/.ray/auth_token on first start: the tests keep token auth but hand Ray a
    token through the environment, so nothing lands in $HOME."""
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    os.environ.pop("RAY_ADDRESS", None)  # a cluster of the caller's would change the path
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_bench(cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
              timeout: float = 600, cold: bool = False) -> subprocess.CompletedProcess:
    """`python -m wtb_conf ARGS` in cwd, the way a user runs it, in a process of its own
    forked warm (tests/warm.py), or with COLD in a new interpreter (the new user's path);
    CHECK: exit 0 or fail with its output."""
    if cold:
        proc = subprocess.run([sys.executable, "-m", "wtb_conf", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    else:
        proc = warm.run("wtb_conf", args, cwd, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wtb(cwd: Path, *args: str, code: int | None = 0, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """`wtb ARGS` in cwd, in a process of its own forked warm; CODE: the exit it must end with
    (None: any)."""
    proc = warm.run("wtb_conf.cli", args, cwd, env=env, timeout=timeout)
    if code is not None and proc.returncode != code:
        raise AssertionError(f"`wtb {' '.join(args)}` exited {proc.returncode}, not {code}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(root: Path, files: dict[str, bytes]) -> Path:
    """FILES (relative path -> bytes) under ROOT, directories made."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def copy_project(dest: Path) -> Path:
    for name in ("conf", "experiments"):
        shutil.copytree(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """A project directory in which `python -m wtb_conf -m +experiment=demo` has run."""
    project = copy_project(tmp_path_factory.mktemp("demo"))
    proc = run_bench(project, "-m", "+experiment=demo")
    (project / "sweep.out").write_text(proc.stdout + proc.stderr)
    return project


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server for the session (tests/pgserver.py), started on first use."""
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """An SQLAlchemy URL of a new, empty PostgreSQL database of this test's own."""
    name = pg_server.new_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """The store's database, once on SQLite and once on PostgreSQL: a test that takes this
    fixture runs against both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'wtb.db'}"
    return request.getfixturevalue("pg_url")


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        why = f"{CHROMIUM} is missing: apt-get install chromium to run the report's browser tests"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    # Playwright's own browser download is not used: the system's Chromium is
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
