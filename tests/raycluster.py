"""A real multi-node Ray cluster on this machine, for tests: `ray start` processes, a head and
worker nodes, each node a process group (a session) of its own so that a test can kill one
node whole, as a lost machine, and always stop every node it started (never `ray stop`: it
stops every Ray on the machine, other tests' too).

Each worker node has its own Ray temp dir (Ray 2.60 honours `--temp-dir` on non-head nodes),
its own envs root (`WTB_ENVS_ROOT`) and a label `wtb-node=<name>`; with `hidden`, it runs in a
mount namespace of its own where a tmpfs is mounted over that directory, so nothing under it
(the driver's launch dir) is readable there: whatever a job needs from it must be shipped.
`unshare -m` needs root (CI runs as root); without it, `unshare -rm` maps the user to root in
a user namespace of its own.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODES_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"id": n["NodeID"], "alive": n["Alive"], "labels": n.get("Labels", {}),
                   "cpus": n["Resources"].get("CPU", 0)} for n in ray.nodes()]))
ray.shutdown()
"""
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(sid: int) -> list[int]:
    """The processes whose session id is `sid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # a zombie is dead already
            found.append(int(entry))
    return found



def _die_with_parent() -> None:
    # a killed test session (a CI timeout) takes its nodes along: `ray start --block` stops
    # the node's processes on SIGTERM (the signal survives unshare's and sh's exec)
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

class Node:
    def __init__(self, name: str, proc: subprocess.Popen, temp_dir: Path, log: Path) -> None:
        self.name, self.proc, self.temp_dir, self.log = name, proc, temp_dir, log

    def kill(self) -> None:
        """SIGKILL to every process of the node's session: `ray start`, the raylet, and the
        workers, which put themselves in process groups of their own (but stay in the
        session), with whatever they started: a lost machine."""
        deadline = time.monotonic() + 30
        while (left := session(self.proc.pid)) and time.monotonic() < deadline:
            for pid in left:  # again until none is left: one may have forked meanwhile
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc.poll() is None:
                self.proc.wait()
            time.sleep(0.1)


class RayCluster:
    """`RayCluster(root, hidden).start()`, then `.address`, `.node_ids()`, `.kill(name)`,
    `.stop()`. `root` holds every node's temp dir, envs root and log."""

    def __init__(self, root: Path, hidden: Path | None = None, workers: int = 2,
                 worker_cpus: int = 1, env: dict[str, str] | None = None,
                 head_config: dict | None = None) -> None:
        self.root, self.hidden, self.workers, self.worker_cpus = root, hidden, workers, worker_cpus
        self.head_config = head_config  # Ray's --system-config, on the head
        self.env = {**os.environ, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, Node] = {}
        self.address = ""
        self.ray = str(Path(sys.executable).with_name("ray"))

    def _start(self, name: str, args: list[str], hide: bool, env: dict[str, str]) -> Node:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        command = [self.ray, "start", "--block", "--disable-usage-stats",
                   f"--temp-dir={temp_dir}", *args]
        if hide and self.hidden is not None:
            unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
            script = (f"mount -t tmpfs wtb-hidden {shlex.quote(str(self.hidden))} && "
                      f"exec {shlex.join(command)}")
            command = [*unshare, "--propagation", "private", "sh", "-c", script]
        with open(log, "w") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**self.env, **env},
                                    start_new_session=True, preexec_fn=_die_with_parent)
        node = Node(name, proc, temp_dir, log)
        self.nodes[name] = node
        return node

    def start(self) -> RayCluster:
        try:
            port = free_port()
            config = ([f"--system-config={json.dumps(self.head_config)}"]
                      if self.head_config else [])
            self._start("head", ["--head", f"--port={port}", "--num-cpus=0",
                                 "--include-dashboard=false", "--labels=wtb-node=head",
                                 *config], False, {})
            self.address = f"127.0.0.1:{port}"
            self.wait_for(1)
            for i in range(1, self.workers + 1):
                self._worker(f"n{i}")
            self.wait_for(1 + self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def _worker(self, name: str) -> None:
        self._start(name, [f"--address={self.address}", f"--num-cpus={self.worker_cpus}",
                           f"--labels=wtb-node={name}"],
                    True, {"WTB_ENVS_ROOT": str(self.root / name / "envs")})

    def restart(self, name: str) -> None:
        """A worker node `kill(name)` took, back as a new node (same name, temp dir, envs
        root), once Ray lists the old one dead: the cluster as the next test expects it."""
        old = {i for i, n in self.node_ids().items() if n == name}
        self._worker(name)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            alive = {i: n for i, n in self.node_ids().items() if n == name}
            if alive and not old & set(alive):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {name} did not come back within {START_TIMEOUT_S} s")
            time.sleep(0.5)

    def nodes_info(self) -> list[dict]:
        out = subprocess.run([sys.executable, "-c", NODES_SCRIPT, self.address],
                             capture_output=True, text=True, timeout=60, env=self.env)
        if out.returncode != 0:
            raise RuntimeError(f"ray.nodes() failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_for(self, alive: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for node in self.nodes.values():
                if node.proc.poll() is not None:
                    raise RuntimeError(f"Ray node {node.name} exited "
                                       f"{node.proc.returncode}:\n{node.log.read_text()[-3000:]}")
            try:
                if sum(n["alive"] for n in self.nodes_info()) >= alive:
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {alive} nodes within "
                                   f"{START_TIMEOUT_S} s")
            time.sleep(0.5)

    def node_ids(self) -> dict[str, str]:
        """Node id -> name (head, n1, n2, ...) of every node alive now."""
        return {n["id"]: n["labels"].get("wtb-node", "?") for n in self.nodes_info()
                if n["alive"]}

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def stop(self) -> None:
        """Every node this cluster started, killed whole: worker nodes first, then the head."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            self.nodes[name].kill()
