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
from typing import NamedTuple


class Owner(NamedTuple):
    host: str
    pid: int
    started: int  # the process's start time in clock ticks since boot (/proc/PID/stat)


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return int(stat[stat.rindex(b")") + 2:].split()[19])


@functools.cache
def host() -> str:
    """This machine's name, plus its boot id: a process of an earlier boot is gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def this_process() -> Owner:
    # not cached: a forked worker is another process with the same module state
    pid = os.getpid()
    return Owner(host(), pid, _start_ticks(pid) or 0)


def alive(owner: Owner) -> bool | None:
    """True or False for a process of this machine; None when it cannot be told (another
    host, or no owner recorded by an older wtb_conf)."""
    if not owner.host or owner.host != host() or not owner.pid:
        return None
    return _start_ticks(owner.pid) == owner.started
