"""What the `wtb` commands share: naming runs, sweeps and commits, printing JSON, and the
notes about runs whose process died."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from wtb_conf.store import Store, StoreError


def resolve_commit(store: Store, ref: str) -> str:
    """A run (its final commit) or a commit, by id or unique prefix."""
    try:
        run = store.run(store.resolve("runs", ref))
    except StoreError:
        return store.resolve("commits", ref)
    if run["commit"] is None:
        raise StoreError(f"run {run['run_id']} has no final commit (status {run['status']})")
    return run["commit"]


def reap(store: Store) -> None:
    """Runs and sweeps whose process died are recorded failed by whoever writes next."""
    reaped = store.reap()
    if reaped["runs"] or reaped["sweeps"]:
        print(f"wtb: recorded as failed: {len(reaped['runs'])} runs and "
              f"{len(reaped['sweeps'])} sweeps whose processes had died", file=sys.stderr)


def note_lost(store: Store) -> None:
    """A read-only command cannot record them failed; it says they are not running."""
    lost = store.lost()
    if lost["runs"] or lost["sweeps"]:
        print(f"wtb: {len(lost['runs'])} runs and {len(lost['sweeps'])} sweeps say `running` "
              "but their processes are gone; the next sweep or `wtb fsck --repair` records "
              "them failed", file=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def sweeps_of(store: Store, refs: Sequence[str]) -> list[str]:
    """Sweep ids from ids, prefixes or `last` (no refs: the last sweep)."""
    out = [store.resolve("sweeps", ref) for ref in refs or ["last"]]
    return list(dict.fromkeys(out))
