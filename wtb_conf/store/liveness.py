"""Which process owns a running run or sweep, and whether that process still exists.

A run is `running` only while the process that started it lives. That process may die with
no chance to say so (kill -9, the OOM killer, os._exit, a lost node), so whoever looks next
(the next sweep, any writing `wtb` command, `wtb fsck --repair`) checks the owner recorded
with the run: a pid alone is reused, so the owner is (host, pid, the process's start time).
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path
from typing import NamedTuple


class Owner(NamedTuple):
    host: str
    pid: int
    started: int  # the process's start time in clock ticks since boot (/proc/PID/stat)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process from /proc/PID/stat; None if there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def _gone(pid: int) -> bool:
    """No process with this pid exists (EPERM: it does, someone else's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@functools.cache
def host() -> str:
    """`name/boot/pidns`: this machine's name, its boot id (a process of an earlier boot is
    gone) and its pid namespace (a pid means nothing in another container of the same
    name). A part that cannot be read is "?"."""

    def read(fn: object) -> str:
        try:
            return str(fn())
        except OSError:
            return "?"

    boot = read(lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
    pidns = read(lambda: os.stat("/proc/self/ns/pid").st_ino)
    return f"{socket.gethostname()}/{boot}/{pidns}"


def ray_node() -> str | None:
    """The id of the Ray node this process is a worker of, if it is one. Ray is asked only
    when this process has imported it already (a local worker never does)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # a driver's view of a cluster it left, say: where is not known
        return None


def this_process() -> Owner:
    # not cached: a forked worker is another process with the same module state
    pid = os.getpid()
    stat = _stat(pid)
    return Owner(host(), pid, stat[1] if stat else 0)


def alive(owner: Owner) -> bool | None:
    """True or False for a process of this machine; None when it cannot be told: another
    machine or container, no /proc, or no owner recorded (an older wtb_conf)."""
    if not owner.host or not owner.pid or not owner.started:
        return None
    name, boot, pidns = (owner.host.split("/") + ["", ""])[:3]
    here_name, here_boot, here_pidns = host().split("/")
    if name != here_name or "?" in (boot, here_boot):
        return None
    if boot != here_boot:  # this machine has rebooted since: every process of then is gone
        return False
    if pidns != here_pidns:
        return None
    stat = _stat(owner.pid)
    if stat is None:  # no /proc entry: gone, unless /proc hides it (hidepid)
        return False if _gone(owner.pid) else None
    state, started = stat
    return started == owner.started and state not in ("Z", "X")  # a zombie has ended
