"""Crashes in the middle of commit_dir and restore.

A child process commits (or restores) with `objects._fault` set to end it with os._exit at one
named step: where a crash leaves a different state on disk. Afterwards the store must open,
every commit in it must be whole (every blob of every tree re-hashed), a restore target must
be absent or complete, and the only leftovers may be orphans (blob files or rows no commit
reaches, `.tmp-*` files, restore staging dirs), which `wtb fsck --repair` removes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write
from sqlalchemy import text

from wtb_conf.store import fsck, open_store

KILLED = 86  # the child's exit status when the fault fired: proof the step was reached

CHILD = r"""
import os, sys
from wtb_conf.store import objects, open_store

db, blobs, src, dest, parent, step, nth, killed = sys.argv[1:]
seen = 0

def fault(name):
    global seen
    if name == step:
        seen += 1
        if seen == int(nth):
            os._exit(int(killed))  # no cleanup, no atexit, no rollback: as a kill -9

objects._fault = fault
store = open_store(db, blobs, inline_max=1024)
if dest == "-":
    store.commit_dir(src, "second", parent=parent)
else:
    store.restore(parent, dest)
"""

# (step, which occurrence of it): every point of commit_dir where the disk state differs
COMMIT_STEPS = [
    ("blob_copied", 1),  # a big file copied into objects/.tmp-*, not renamed yet
    ("blob_written", 1),  # one blob file in place, no row names it
    ("blob_written", 2),
    ("blobs_staged", 1),  # every blob file in place and fsynced, before the transaction
    ("in_transaction", 1),  # rows inserted, stat cache updated, not committed
    ("committed", 1),  # committed, the in-memory stat cache not updated
]
RESTORE_STEPS = [
    ("restore_file_written", 1),  # mid-staging
    ("restore_file_written", 4),
    ("restore_staged", 1),  # everything staged, before the rename into place
]


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Each file's bytes and each link's target, by relative path."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


@pytest.fixture
def world(tmp_path):
    """A store holding one commit of `src`, then `src` changed: new big and small files, a big
    file twice, a changed link."""
    src = write(tmp_path / "src", {"a.txt": b"one", "big/1.bin": os.urandom(5000),
                                   "big/2.bin": os.urandom(6000), "sub/c.txt": b"c"})
    os.symlink("a.txt", src / "link")
    with open_store(str(tmp_path / "wtb.db"), tmp_path / "blobs", inline_max=1024) as store:
        first = store.commit_dir(src, "first")
    expected_first = snapshot(src)
    same = os.urandom(7000)
    write(src, {"big/1.bin": os.urandom(5000), "big/3.bin": same, "big/3-copy.bin": same,
                "new.txt": b"new", "sub/c.txt": b"cc"})
    (src / "link").unlink()
    os.symlink("sub/c.txt", src / "link")
    return tmp_path, src, first, expected_first


def crash(tmp: Path, src: Path, dest: str, parent: str, step: str, nth: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp / "wtb.db"), str(tmp / "blobs"), str(src), dest,
         parent, step, str(nth), str(KILLED)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == KILLED, f"step {step} #{nth} not reached:\n{proc.stderr}"


def assert_whole(tmp: Path) -> list[str]:
    """The store opens, every commit's blobs re-hash to their ids, and fsck finds at most
    orphans, which its repair removes. Returns the commit ids."""
    with open_store(str(tmp / "wtb.db"), tmp / "blobs", inline_max=1024) as store:
        with store.engine.connect() as c:
            commits = [r[0] for r in c.execute(text("SELECT id FROM commits"))]
            rows = dict(c.execute(text("SELECT id, data FROM blobs")).all())
        for commit in commits:  # our own re-hash, independent of fsck
            for rel, entry in store.tree(commit).items():
                assert entry.blob in rows, f"{rel} of {commit}: no blob row"
                data = rows[entry.blob]
                if data is None:
                    data = store._blob_path(entry.blob).read_bytes()
                assert hashlib.sha256(data).hexdigest() == entry.blob, f"{rel} of {commit}"
                assert len(data) == entry.size
        report = fsck.check(store, None, grace=0)
        assert {p.kind for p in report.problems} <= {
            "orphan_blob", "orphan_file", "orphan_tmp", "orphan_stat_cache"}, report.problems
        fsck.repair(store, report)  # (what check() listed with grace=0: every orphan)
        after = fsck.check(store, None, grace=0)
        assert after.clean, after.problems
        assert not list((tmp / "blobs").rglob(".tmp-*"))
    return commits


@pytest.mark.parametrize("step,nth", COMMIT_STEPS, ids=[f"{s}-{n}" for s, n in COMMIT_STEPS])
def test_a_commit_killed_at_any_step_leaves_a_whole_store(world, step, nth):
    tmp, src, first, _ = world
    crash(tmp, src, "-", first, step, nth)
    commits = assert_whole(tmp)
    assert first in commits
    assert len(commits) == (2 if step == "committed" else 1)  # the commit is all or nothing
    # The same commit made again, in a fresh process's state: whole, and the same id.
    with open_store(str(tmp / "wtb.db"), tmp / "blobs", inline_max=1024) as store:
        second = store.commit_dir(src, "second", parent=first)
        assert step != "committed" or second in commits
        store.restore(second, tmp / "check")
    assert snapshot(tmp / "check") == snapshot(src)
    assert_whole(tmp)


@pytest.mark.parametrize("step,nth", RESTORE_STEPS, ids=[f"{s}-{n}" for s, n in RESTORE_STEPS])
def test_a_restore_killed_at_any_step_leaves_dest_absent(world, step, nth):
    tmp, src, first, expected = world
    dest = tmp / "out" / "dest"
    crash(tmp, src, str(dest), first, step, nth)
    assert not dest.exists()  # absent, never partial
    leftovers = list((tmp / "out").iterdir())
    assert leftovers and all(p.name.startswith(".dest.restoring-") for p in leftovers)
    assert_whole(tmp)
    with open_store(str(tmp / "wtb.db"), tmp / "blobs", inline_max=1024) as store:
        store.restore(first, dest)  # the leftover staging dir is in no one's way
    assert snapshot(dest) == expected
