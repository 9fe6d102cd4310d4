"""`python -m MODULE ARGS` for the tests, without paying Python's start and wtb_conf's imports
(~1 s of CPU) each time: a fork server.

The server is a plain interpreter that has imported what `python -m wtb_conf` and `wtb`
import, and nothing else: no test has run in it, no thread, no Ray, no gRPC. Each run is a
fork of it, a process of its own: its own cwd, environment, sys.argv, sys.path (the launch dir
first, then PYTHONPATH, then the interpreter's own, as `python -m` makes it), stdio, exit
handlers and exit code. So a test sees what a user's command does, at a third of the cost.
Runs a test signals or runs at once (Ctrl-C, kills, races) still use subprocess.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PRELOAD = (  # what wtb_conf/__main__.py and wtb_conf/cli import; importing them runs nothing
    "hydra", "omegaconf", "hydra.core.config_store", "wtb_conf.config.checks",
    "wtb_conf.driver.callback", "wtb_conf.driver.interrupts", "wtb_conf.job.task",
    "wtb_conf.cli", "hydra_plugins.wtb_conf_launcher.launcher",
    "scipy.stats",  # (what `wtb compare` and a sweep's end import when they judge jobs)
)


class _Server:
    def __init__(self) -> None:
        to_server, self._requests = os.pipe()
        self._replies, from_server = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(to_server), str(from_server)],
            pass_fds=(to_server, from_server), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL)
        os.close(to_server)
        os.close(from_server)
        self._buffer = b""
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _reply(self, timeout: float | None) -> dict | None:
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self._replies], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self._replies, 65536)
            if not chunk:
                raise RuntimeError("the tests' fork server (tests/warm.py) died")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, request: dict, timeout: float) -> tuple[int, bool]:
        """The exit code of one run, and whether it was killed at TIMEOUT."""
        with self._lock:
            os.write(self._requests, json.dumps(request).encode() + b"\n")
            pid = self._reply(None)["pid"]
            done = self._reply(timeout)
            timed_out = done is None
            if timed_out:
                os.kill(pid, signal.SIGKILL)
                done = self._reply(None)
            return done["code"], timed_out


_server: _Server | None = None


def run(module: str, args: list[str] | tuple[str, ...], cwd: Path, *,
        env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Like `subprocess.run([python, -m, MODULE, *ARGS], cwd=CWD, capture_output=True,
    text=True, timeout=TIMEOUT)`; MODULE may be a script's path (`python SCRIPT ARGS`)."""
    global _server
    if _server is None or not _server.alive():
        _server = _Server()
    script = module.endswith(".py")
    cmd = [sys.executable, *([] if script else ["-m"]), module, *args]
    with tempfile.TemporaryDirectory(prefix="warm-") as tmp:
        paths = {"stdin": os.devnull,
                 **{name: os.path.join(tmp, name) for name in ("stdout", "stderr")}}
        request = {"module": module, "args": list(args), "cwd": str(Path(cwd).resolve()),
                   "env": dict(os.environ if env is None else env), **paths}
        code, timed_out = _server.run(request, timeout)
        out = Path(paths["stdout"]).read_text(errors="replace")
        err = Path(paths["stderr"]).read_text(errors="replace")
    if timed_out:
        raise subprocess.TimeoutExpired(cmd, timeout, out, err)
    return subprocess.CompletedProcess(cmd, code, out, err)


# --- the server ---------------------------------------------------------------------------

def _child(request: dict, base_path: list[str], keep: set[int]) -> None:
    """In the fork: become `python -m MODULE ARGS` and exit as it would."""
    import atexit
    import runpy
    import traceback

    for fd, path, flags in ((0, request["stdin"], os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    for fd in keep:  # the server's pipes and pidfds are not the command's
        os.close(fd)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False,
                                       errors="backslashreplace")
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    module = request["module"]
    script = os.path.abspath(module) if module.endswith(".py") else None
    sys.path[:] = [os.path.dirname(script) if script else request["cwd"], *extra, *base_path]
    sys.argv = [script or module, *request["args"]]
    atexit._clear()
    code = 0
    try:
        if script:
            runpy.run_path(script, run_name="__main__")
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - what Python prints for an uncaught one
        traceback.print_exc()
        code = 1
    threading._shutdown()  # as Python's own exit: non-daemon threads, then exit handlers
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream: nothing more to say
            pass
    os._exit(code & 0xFF)


def _serve(requests: int, replies: int) -> None:
    import importlib

    base_path = sys.path[1:]  # without this file's directory, which `python -m` would not add
    for name in PRELOAD:
        importlib.import_module(name)
    pidfds: dict[int, int] = {}  # pidfd -> pid
    buffer = b""
    while True:
        ready, _, _ = select.select([requests, *pidfds], [], [])
        for fd in ready:
            if fd != requests:
                _, status = os.waitpid(pidfds.pop(fd), 0)
                os.close(fd)
                reply = {"code": os.waitstatus_to_exitcode(status)}
                os.write(replies, json.dumps(reply).encode() + b"\n")
                continue
            chunk = os.read(requests, 65536)
            if not chunk:
                return  # the test process is gone
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    try:
                        _child(request, base_path, {requests, replies, *pidfds})
                    finally:
                        os._exit(70)  # _child ends by os._exit; this is a bug in it
                pidfds[os.pidfd_open(pid)] = pid
                os.write(replies, json.dumps({"pid": pid}).encode() + b"\n")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
