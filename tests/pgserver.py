"""A real PostgreSQL server for the tests, started from the machine's own binaries (`initdb`,
`pg_ctl`) in a temporary directory and stopped at the end of the session. Each test gets a
database of its own (`PgServer.new_database`), so no test sees another's rows.

`initdb` refuses to run as root: as root the cluster belongs to the `postgres` user.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    """`name` on PATH, or in Debian's /usr/lib/postgresql/VERSION/bin (not on PATH there)."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"the tests need PostgreSQL's {name}: apt-get install postgresql")
    return found


def _die_with_parent() -> None:
    # (runs in the child after it became the postgres user, which would clear the setting)
    ctypes.CDLL(None).prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG


def _remove_dead_servers() -> None:
    """The directories of servers a killed session left (they died with it): those whose
    postmaster is gone, ten minutes on. Not sooner: initdb's bootstrap backend writes a
    postmaster.pid too and exits, so another xdist worker's server, starting, looks dead."""
    for root in Path(tempfile.gettempdir()).glob("wtb-pg-*"):
        try:
            if time.time() - root.stat().st_mtime < 600:
                continue  # another session's or worker's, starting
            pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
            continue  # a live server, another session's
        except (OSError, ValueError, IndexError):
            pass  # no postmaster (ProcessLookupError is an OSError), or none ever started
        shutil.rmtree(root, ignore_errors=True)


class PgServer:
    def __init__(self) -> None:
        _remove_dead_servers()
        self.root = Path(tempfile.mkdtemp(prefix="wtb-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres"
        self._as: list[str] = []
        self.process: subprocess.Popen | None = None
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        proc = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}")

    def start(self) -> PgServer:
        self._run(_binary("initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        # A child of this process, not pg_ctl's daemon: it goes when the session goes, however
        # that ends (a CI timeout's SIGKILL included). fsync off: a test server need not
        # survive a power cut, and commits cost ~10x less.
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (the server's, until stop)
        self.process = subprocess.Popen(
            [_binary("postgres"), "-D", str(self.data), "-c", "listen_addresses=127.0.0.1",
             "-c", f"port={self.port}", "-c", f"unix_socket_directories={self.root}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdout=log, stderr=log, user="postgres" if self._as else None,
            preexec_fn=_die_with_parent, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.url(driver="postgresql"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("PostgreSQL did not start: "
                                       + (self.root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGQUIT)  # PostgreSQL's immediate shutdown
                self.process.wait(timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a name cannot be a bound parameter
        return name

    def drop_database(self, name: str) -> None:
        """Drop it, whoever is still connected (a test's leftover pool, a killed worker's)."""
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
