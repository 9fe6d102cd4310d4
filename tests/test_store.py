from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from wtb_conf.store import ObjectCorrupted, StoreError, UnsafePath, open_store
from wtb_conf.store import files as files_mod


@pytest.fixture
def store(db_url, tmp_path):
    """A store on SQLite and one on PostgreSQL (conftest's db_url): every test taking it runs
    on both."""
    with open_store(db_url, tmp_path / "blobs", inline_max=1024) as s:
        yield s


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def age(store, root: Path, seconds: float = 10) -> None:
    """Backdate every file, as if written well before the commit, and wait (bounded) until the
    filesystem clock has moved past their ctime, which utime just set to now: until then the
    store rightly treats them as racy."""
    t = time.time() - seconds
    for p in root.rglob("*"):
        os.utime(p, (t, t))
    newest = max(p.stat().st_ctime_ns for p in root.rglob("*"))
    deadline = time.monotonic() + 5
    while store._fs_now() <= newest and time.monotonic() < deadline:
        time.sleep(0.001)


def blob_count(store) -> int:
    with store.engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM blobs")).scalar_one()


def test_commit_restore_roundtrip_keeps_bytes_and_modes(store, tmp_path):
    big = os.urandom(5000)  # above inline_max: stored as a file
    src = write(tmp_path / "src", {"a.txt": b"alpha", "sub/dir/b.bin": big, "run.sh": b"#!"})
    os.chmod(src / "run.sh", 0o755)
    commit = store.commit_dir(src, "first")
    restored = store.restore(commit, tmp_path / "dest")
    assert restored == ["a.txt", "run.sh", "sub/dir/b.bin"]
    assert (tmp_path / "dest/sub/dir/b.bin").read_bytes() == big
    assert (tmp_path / "dest/a.txt").read_bytes() == b"alpha"
    assert os.stat(tmp_path / "dest/run.sh").st_mode & 0o777 == 0o755
    big_id = hashlib.sha256(big).hexdigest()
    assert (tmp_path / "blobs/objects" / big_id[:2] / big_id[2:]).is_file()
    assert store.fsck() == []


def test_identical_content_is_stored_once_across_dirs_and_commits(store, tmp_path):
    same = os.urandom(3000)
    a = write(tmp_path / "a", {"x": same, "y": b"small"})
    b = write(tmp_path / "b", {"copy/of/x": same, "y": b"small"})
    store.commit_dir(a)
    before = blob_count(store)
    store.commit_dir(b)
    # only b's tree is new: both file blobs were stored already
    assert blob_count(store) == before + 1
    assert store.last_commit.new_blobs == 1


def test_commit_ids_are_deterministic_and_depend_on_parent_and_message(store, tmp_path):
    src = write(tmp_path / "src", {"f": b"1"})
    c1 = store.commit_dir(src, "m")
    assert store.commit_dir(src, "m") == c1
    assert store.commit_dir(src, "other") != c1
    assert store.commit_dir(src, "m", parent=c1) != c1


def test_stat_cache_skips_unchanged_files_and_notices_changes(store, tmp_path):
    src = write(tmp_path / "src", {f"f{i}": os.urandom(100) for i in range(20)})
    age(store, src)
    store.commit_dir(src)
    assert store.last_commit.hashed == 20
    store.commit_dir(src)
    assert store.last_commit.hashed == 0
    (src / "f3").write_bytes(b"changed")
    (src / "new").write_bytes(b"new")
    (src / "f4").unlink()
    c = store.commit_dir(src)
    assert store.last_commit.hashed == 2
    tree = store.tree(c)
    assert "f4" not in tree and tree["f3"].size == len(b"changed")


def test_racy_files_are_not_trusted_from_the_cache(store, tmp_path):
    # A file written in the same timestamp tick as the commit could change again without its
    # stat changing, so it must be re-read next time (git's "racy clean" rule).
    src = write(tmp_path / "src", {"f": b"aaaa"})
    future = time.time() + 3600
    os.utime(src / "f", (future, future))
    store.commit_dir(src)
    store.commit_dir(src)
    assert store.last_commit.hashed == 1


def test_failed_transaction_leaves_no_commit_and_store_consistent(store, tmp_path, monkeypatch):
    src = write(tmp_path / "src", {"big": os.urandom(4000), "small": b"s"})
    original = store._update_stat_cache

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash inside the commit transaction")

    monkeypatch.setattr(store, "_update_stat_cache", crash)
    with pytest.raises(RuntimeError):
        store.commit_dir(src, "doomed")
    with store.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM commits")).scalar_one() == 0
        assert c.execute(text("SELECT count(*) FROM blobs")).scalar_one() == 0
    monkeypatch.setattr(store, "_update_stat_cache", original)
    commit = store.commit_dir(src, "retry")
    assert store.fsck() == []
    assert sorted(store.tree(commit)) == ["big", "small"]


def test_blob_file_is_durable_before_the_row_that_references_it(store, tmp_path, monkeypatch):
    # The blob file must already be in place when the transaction inserts the rows.
    src = write(tmp_path / "src", {"big": os.urandom(4000)})
    seen = []
    original = store._update_stat_cache

    def check(conn, *args):
        blob = hashlib.sha256((src / "big").read_bytes()).hexdigest()
        seen.append((tmp_path / "blobs/objects" / blob[:2] / blob[2:]).is_file())
        return original(conn, *args)

    monkeypatch.setattr(store, "_update_stat_cache", check)
    store.commit_dir(src)
    assert seen == [True]


def _forge_tree(store, entries) -> str:
    """Insert a commit whose tree lists `entries` (as a tampered database would)."""
    tree = json.dumps({"format": 1, "entries": entries}).encode()
    tree_id = hashlib.sha256(tree).hexdigest()
    with store.engine.begin() as c:
        c.execute(text("INSERT INTO blobs (id, size, data) VALUES (:i, :s, :d)"),
                  {"i": tree_id, "s": len(tree), "d": tree})
        c.execute(text("INSERT INTO commits (id, tree, parent, message, created_at) "
                       "VALUES ('forged', :t, NULL, '', 'now')"), {"t": tree_id})
    return "forged"


@pytest.mark.parametrize("evil", ["../escape.txt", "/etc/evil", "a/../../escape", "", "a//b"])
def test_restore_refuses_paths_that_escape(store, tmp_path, evil):
    src = write(tmp_path / "src", {"ok": b"fine"})
    blob = store.tree(store.commit_dir(src))["ok"].blob
    forged = _forge_tree(store, [["ok", blob, 4, 0o644], [evil, blob, 4, 0o644]])
    with pytest.raises(UnsafePath, match="refusing"):
        store.restore(forged, tmp_path / "dest" / "inner")
    assert not (tmp_path / "dest" / "inner").exists()
    assert not (tmp_path / "dest" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_restore_refuses_a_symlink_inside_dest_pointing_out(store, tmp_path):
    from wtb_conf.store.objects import safe_target

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePath):
        safe_target(dest, "link/escape.txt")


def test_restore_into_non_empty_dir_is_refused(store, tmp_path):
    src = write(tmp_path / "src", {"f": b"1"})
    commit = store.commit_dir(src)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        store.restore(commit, tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").read_text() == "mine"


@pytest.mark.parametrize("where", ["inline", "file"])
def test_corrupted_blob_is_detected_on_restore_and_nothing_is_written(store, tmp_path, where):
    payload = os.urandom(4000) if where == "file" else b"inline bytes"
    src = write(tmp_path / "src", {"a.txt": b"fine", "data/victim": payload})
    commit = store.commit_dir(src)
    blob = hashlib.sha256(payload).hexdigest()
    if where == "file":
        path = tmp_path / "blobs/objects" / blob[:2] / blob[2:]
        os.chmod(path, 0o644)
        path.write_bytes(b"bitrot" + payload[6:])
    else:
        with store.engine.begin() as c:
            c.execute(text("UPDATE blobs SET data = :d WHERE id = :i"),
                      {"d": b"tampered", "i": blob})
    with pytest.raises(ObjectCorrupted, match=rf"blob {blob} \(file data/victim\) is corrupted"):
        store.restore(commit, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert any("is corrupted" in p for p in store.fsck())


def test_diff_reports_added_removed_changed(store, tmp_path):
    a = store.commit_dir(write(tmp_path / "a", {"same": b"1", "gone": b"2", "edit": b"3"}))
    b = store.commit_dir(write(tmp_path / "b", {"same": b"1", "new": b"4", "edit": b"5"}))
    d = store.diff(a, b)
    assert (d.added, d.removed, d.changed) == (["new"], ["gone"], ["edit"])


def test_schema_is_migrated_once_and_reopening_is_idempotent(db_url, tmp_path):
    db = db_url
    open_store(db, tmp_path / "b").close()
    with open_store(db, tmp_path / "b") as s, s.engine.connect() as c:
        versions = [r[0] for r in c.execute(text("SELECT v FROM wtb_migrations ORDER BY v"))]
    from wtb_conf.store.schema import MIGRATIONS

    assert versions == list(range(1, len(MIGRATIONS) + 1))


# SHA-256 (first 16 hex digits) of each shipped migration's SQLite script. A shipped
# migration is never edited (stores in use have run it): append one, and its digest here.
SHIPPED = ["0bb4269fefcaee3f", "5e5c5fb0d2cf52d0", "8d80635166858b80", "12ba6b2100fe53a1",
           "03a8d72fe61e896b", "4b0fa741bb59a23c", "3e2270f8f10f66e1", "226b9d951fd2a0e0",
           "7be51e022b5e33fc"]


def test_shipped_migrations_keep_their_sqlite_text_and_have_a_postgresql_one():
    from wtb_conf.store.schema import MIGRATIONS, script_for

    sqlite = [script_for(v, "sqlite") for v in range(1, len(MIGRATIONS) + 1)]
    assert [hashlib.sha256(s.encode()).hexdigest()[:16] for s in sqlite] == SHIPPED
    postgresql = [script_for(v, "postgresql") for v in range(1, len(MIGRATIONS) + 1)]
    assert "BYTEA" in postgresql[0] and "GENERATED BY DEFAULT AS IDENTITY" in postgresql[1]
    assert not any(" BLOB" in s or "INTEGER PRIMARY KEY" in s.replace("v INTEGER", "")
                   for s in postgresql)


def test_inline_blobs_come_back_as_the_same_bytes(store, tmp_path):
    every_byte = bytes(range(256)) * 3  # NUL, invalid UTF-8: bytes, never text
    commit = store.commit_dir(write(tmp_path / "src", {"b.bin": every_byte}))
    blob = store.tree(commit)["b.bin"].blob
    with store.engine.connect() as c:
        data = c.execute(text("SELECT data FROM blobs WHERE id = :i"), {"i": blob}).scalar_one()
    assert bytes(data) == every_byte and store.read_blob(blob) == every_byte


def test_ids_resolve_from_a_prefix_in_either_case(store):
    sweep = store.create_sweep([])
    runs = [store.start_run(sweep, i, [], "wf", "{}", "d", "/tmp/job") for i in range(40)]
    run = runs[0]
    assert store.resolve("runs", run[:10].upper()) == run  # ids are lowercase hex
    assert store.resolve("sweeps", sweep[:8]) == sweep
    shared = next(c for c in "0123456789abcdef" if sum(r[0] == c for r in runs) > 1)
    with pytest.raises(StoreError, match=f"'{shared}' matches several runs"):
        store.resolve("runs", shared)  # (40 runs, 16 first digits: two share one)
    with pytest.raises(StoreError, match="is not an id: ids are hexadecimal"):
        store.resolve("runs", "zz%")


# -- symlinks -----------------------------------------------------------------------------

LINK = 0o120000

# (case, links to create {path: target}, files to create, tree paths expected absent)
LINK_CASES = [
    ("file link", {"l": "f"}, {"f": b"x"}, []),
    ("dir link", {"dl": "d"}, {"d/x": b"x", "f": b"y"}, ["dl/x"]),
    ("dangling link", {"gone": "no/such/file"}, {"f": b"x"}, []),
    ("link outside", {"out": "../../outside", "abs": "/etc"}, {"f": b"x"}, ["out/secret"]),
    ("link in subdir", {"sub/up": ".."}, {"sub/f": b"x"}, ["sub/up/sub/f"]),
]


@pytest.mark.parametrize("case,links,files,absent", LINK_CASES, ids=[c[0] for c in LINK_CASES])
def test_symlinks_are_stored_as_links_and_restored_verbatim(store, tmp_path, case, links,
                                                             files, absent):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not for the store")
    src = write(tmp_path / "src" / "in", files)
    for rel, target in links.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, src / rel)
    tree = store.tree(commit := store.commit_dir(src))
    for rel, target in links.items():  # git's link entry: mode 120000, blob = the target
        raw = os.fsencode(target)
        assert tree[rel] == (hashlib.sha256(raw).hexdigest(), len(raw), LINK)
    assert not set(absent) & set(tree)  # never followed
    assert {p for p, e in tree.items() if e.mode != LINK} == set(files)

    dest = tmp_path / "dest"
    assert store.restore(commit, dest) == sorted(tree)
    for rel, target in links.items():
        assert os.readlink(dest / rel) == target
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data and not (dest / rel).is_symlink()
    assert [p.name for p in outside.iterdir()] == ["secret"]  # nothing written through a link
    assert store.fsck() == []


@pytest.mark.parametrize("change,expected", [
    ("retarget", {"changed": ["l"]}),
    ("link to file", {"changed": ["l"]}),  # same bytes as the old target: the mode differs
    ("file to link", {"changed": ["f"]}),
    ("remove link", {"removed": ["l"]}),
    ("same", {}),
])
def test_diff_sees_link_changes(store, tmp_path, change, expected):
    src = write(tmp_path / "src", {"f": b"a", "g": b"b"})
    os.symlink("f", src / "l")
    before = store.commit_dir(src)
    if change == "retarget":
        (src / "l").unlink()
        os.symlink("g", src / "l")
    elif change == "link to file":
        (src / "l").unlink()
        (src / "l").write_bytes(b"f")
    elif change == "file to link":
        (src / "f").unlink()
        os.symlink("a", src / "f")
    elif change == "remove link":
        (src / "l").unlink()
    d = store.diff(before, store.commit_dir(src))
    assert d.as_dict() == {"added": [], "removed": [], "changed": [], **expected}


def test_a_cached_file_replaced_by_a_link_is_committed_as_the_link(store, tmp_path):
    src = write(tmp_path / "src", {"f": b"data", "g": b"other"})
    age(store, src)
    store.commit_dir(src)
    (src / "f").unlink()
    os.symlink("g", src / "f")
    tree = store.tree(store.commit_dir(src))
    assert tree["f"].mode == LINK
    with store.engine.connect() as c:  # links are never in the stat cache
        paths = [r[0] for r in c.execute(text("SELECT path FROM stat_cache"))]
    assert paths == ["g"]


@pytest.mark.parametrize("link_target", ["/etc", "sub", "..", "."])
def test_restore_refuses_entries_beneath_a_link(store, tmp_path, link_target):
    src = write(tmp_path / "src", {"ok": b"fine"})
    blob = store.tree(store.commit_dir(src))["ok"].blob
    raw = link_target.encode()
    link_blob = hashlib.sha256(raw).hexdigest()
    with store.engine.begin() as c:
        c.execute(text("INSERT INTO blobs (id, size, data) VALUES (:i, :s, :d)"),
                  {"i": link_blob, "s": len(raw), "d": raw})
    forged = _forge_tree(store, [["a", link_blob, len(raw), LINK], ["a/x", blob, 4, 0o644],
                                 ["ok", blob, 4, 0o644]])
    with pytest.raises(UnsafePath, match="beneath the symlink 'a'"):
        store.restore(forged, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not list(tmp_path.glob(".dest.restoring-*"))


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_other_file_kinds_are_skipped_with_a_warning(store, tmp_path, caplog, kind):
    src = write(tmp_path / "src", {"f": b"x"})
    special = src / "special"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(special))
        sock.close()
    with caplog.at_level(logging.WARNING, logger="wtb_conf.store"):
        tree = store.tree(store.commit_dir(src))
    assert list(tree) == ["f"]
    assert f"{special} is not a regular file" in caplog.text


# -- files that vanish or change while committed ----------------------------------------

@pytest.mark.parametrize("victim", ["small", "big", "link", "dir/inside"])
def test_a_file_deleted_between_scan_and_read_is_left_out_with_a_warning(
        store, tmp_path, monkeypatch, caplog, victim):
    src = write(tmp_path / "src", {"small": b"s", "big": os.urandom(5000), "dir/inside": b"i",
                                   "keep": b"k"})
    os.symlink("keep", src / "link")
    walk = files_mod.walk

    def deleting_walk(root):  # the node deletes the file just after the scan saw it
        for rel, st in walk(root):
            if rel == victim:
                os.unlink(os.path.join(root, rel))
            yield rel, st

    monkeypatch.setattr(files_mod, "walk", deleting_walk)
    with caplog.at_level(logging.WARNING, logger="wtb_conf.store"):
        tree = store.tree(commit := store.commit_dir(src))
    assert victim not in tree and "keep" in tree
    assert f"{src / victim} vanished while being committed" in caplog.text
    assert not list((tmp_path / "blobs/objects").glob(".tmp-*"))
    store.restore(commit, tmp_path / "dest")
    assert store.fsck() == []


def test_a_file_that_grows_past_inline_max_while_read_is_streamed(store, tmp_path, monkeypatch):
    src = write(tmp_path / "src", {"grows": b"small"})
    walk = files_mod.walk
    grown = b"small" + os.urandom(5000)

    def growing_walk(root):
        for rel, st in walk(root):
            (src / rel).write_bytes(grown)
            yield rel, st

    monkeypatch.setattr(files_mod, "walk", growing_walk)
    commit = store.commit_dir(src)
    blob = hashlib.sha256(grown).hexdigest()
    assert store.tree(commit)["grows"].blob == blob
    assert (tmp_path / "blobs/objects" / blob[:2] / blob[2:]).is_file()
    assert store.commit_dir(src) == commit  # re-read (its stat changed during the read) ...
    assert store.last_commit.hashed == 1  # ... and not cached


# -- streaming ----------------------------------------------------------------------------

def test_big_files_stream_through_small_chunks(store, tmp_path, monkeypatch):
    monkeypatch.setattr(files_mod, "CHUNK_SIZE", 7)
    big = os.urandom(10_000)
    src = write(tmp_path / "src", {"big": big, "copy/big": big, "small": b"s"})
    commit = store.commit_dir(src)
    blob = hashlib.sha256(big).hexdigest()
    chunks = list(store.iter_blob(blob))
    assert b"".join(chunks) == big and max(map(len, chunks)) == 7
    store.restore(commit, tmp_path / "dest")
    assert (tmp_path / "dest/big").read_bytes() == big == (tmp_path / "dest/copy/big").read_bytes()
    objects = tmp_path / "blobs/objects"
    assert not list(objects.glob(".tmp-*"))  # the second copy was dropped, not left behind
    blob_file = objects / blob[:2] / blob[2:]
    inode = blob_file.stat().st_ino
    store.commit_dir(write(tmp_path / "again", {"big": big}))  # idempotent add: not replaced
    assert blob_file.stat().st_ino == inode and not list(objects.glob(".tmp-*"))


def test_copy_blob_removes_a_corrupted_target(store, tmp_path, monkeypatch):
    monkeypatch.setattr(files_mod, "CHUNK_SIZE", 100)
    big = os.urandom(5000)
    store.commit_dir(write(tmp_path / "src", {"big": big}))
    blob = hashlib.sha256(big).hexdigest()
    path = tmp_path / "blobs/objects" / blob[:2] / blob[2:]
    os.chmod(path, 0o644)
    path.write_bytes(big[:-1] + b"!")
    target = tmp_path / "out"
    with pytest.raises(ObjectCorrupted, match=rf"blob {blob} \(file big\) is corrupted"):
        store.copy_blob(blob, target, "big")
    assert not target.exists()


# -- disk full, file too large ------------------------------------------------------------

NO_ROOM = [(errno.ENOSPC, "the disk is full"), (errno.EFBIG, "the file is too large"),
           (errno.EDQUOT, "the disk quota is exceeded")]


def _failing_write_all(err: int):
    real = files_mod.write_all

    def write_all(fd, data):  # half written, then no room
        real(fd, memoryview(data)[: len(data) // 2])
        raise OSError(err, os.strerror(err))

    return write_all


@pytest.mark.parametrize("err,words", NO_ROOM)
def test_commit_without_room_names_the_file_and_leaves_nothing(store, tmp_path, monkeypatch,
                                                               err, words):
    src = write(tmp_path / "src", {"big": os.urandom(5000), "small": b"s"})
    monkeypatch.setattr(files_mod, "write_all", _failing_write_all(err))
    objects = tmp_path / "blobs" / "objects"
    with pytest.raises(StoreError, match=rf"cannot commit {src / 'big'}: writing its blob into "
                                         rf"{objects} failed: {words}"):
        store.commit_dir(src)
    assert blob_count(store) == 0 and store.fsck() == []
    assert [p for p in objects.rglob("*") if p.is_file()] == []  # no temp file left


@pytest.mark.parametrize("err,words", NO_ROOM)
def test_restore_without_room_leaves_dest_untouched(store, tmp_path, monkeypatch, err, words):
    commit = store.commit_dir(write(tmp_path / "src", {"a": b"a", "big": os.urandom(5000)}))
    monkeypatch.setattr(files_mod, "write_all", _failing_write_all(err))
    dest = tmp_path / "dest"
    with pytest.raises(StoreError, match=rf"cannot restore a of commit {commit} into {dest} "
                                         rf"\(staged in {tmp_path}\): {words}"):
        store.restore(commit, dest)
    # (data/: the SQLite store's own directory)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "data") == ["blobs", "src"]


RLIMIT_SCRIPT = r"""
import os, resource, signal, sys
from wtb_conf.store import StoreError, open_store

db, blobs, src, dest, what = sys.argv[1:]
store = open_store(db, blobs, inline_max=1024)
commit = store.commit_dir(src) if what == "restore" else None
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    store.commit_dir(src) if what == "commit" else store.restore(commit, dest)
except StoreError as e:
    print(e)
    sys.exit(3)
"""


@pytest.mark.parametrize("what", ["commit", "restore"])
def test_a_real_file_size_limit_gives_a_store_error(db_url, tmp_path, what):
    src = write(tmp_path / "src", {"small": b"s", "huge": os.urandom(2 << 20)})
    proc = subprocess.run(
        [sys.executable, "-c", RLIMIT_SCRIPT, db_url, str(tmp_path / "blobs"),
         str(src), str(tmp_path / "dest"), what], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    if what == "commit":
        assert proc.stdout.startswith(f"cannot commit {src / 'huge'}: writing its blob into "
                                      f"{tmp_path / 'blobs' / 'objects'} failed: the file is "
                                      "too large")
    else:
        assert proc.stdout.startswith("cannot restore huge of commit ")
        assert f"into {tmp_path / 'dest'}" in proc.stdout and "the file is too large" in proc.stdout
    assert not (tmp_path / "dest").exists() and not list(tmp_path.glob(".dest.restoring-*"))
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))
    with open_store(db_url, tmp_path / "blobs", inline_max=1024) as s:
        assert s.fsck() == []
        with s.engine.connect() as c:
            commits = c.execute(text("SELECT count(*) FROM commits")).scalar_one()
        assert commits == (1 if what == "restore" else 0)


MEMORY_SCRIPT = r"""
import os, resource, sys
from wtb_conf.store import open_store

src, work, mib = sys.argv[1:]
store = open_store(os.path.join(work, "wtb.db"), os.path.join(work, "blobs"))
store.commit_dir(src, "warm up")  # imports, SQLAlchemy's caches: not what is measured
store.restore(store.commit_dir(src, "warm up"), os.path.join(work, "warm"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(os.path.join(src, "big"), "wb") as f:
    for _ in range(int(mib)):
        f.write(os.urandom(1 << 20))
commit = store.commit_dir(src)
store.restore(commit, os.path.join(work, "dest"))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_committing_and_restoring_a_big_file_takes_flat_memory(tmp_path):
    # SQLite only: a big file is a blob file whatever the database; what is measured is the
    # streaming. 32 MiB, to stay fast: reading it whole would add >= 32 MB (whole reads added
    # 1.15 GB for 1 GiB); benchmarks/memory_bench.py measures 300 MB to 2 GiB.
    src = write(tmp_path / "src", {"small": b"s"})
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(src), str(tmp_path), "32"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 12, f"peak RSS grew by {proc.stdout.strip()} MB"


def test_a_blob_removed_while_its_commit_runs_fails_the_commit_not_the_store(store, tmp_path,
                                                                             monkeypatch):
    """`wtb fsck --repair` removes a blob row no commit reaches; a commit that found the
    blob stored just before would name a missing blob: it fails instead, and nothing of it
    is written."""
    from sqlalchemy import text

    from wtb_conf.store import objects

    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("orphan until committed")
    blob = hashlib.sha256(b"orphan until committed").hexdigest()
    with store.engine.begin() as conn:  # stored, but no commit reaches it yet: an orphan
        conn.execute(text("INSERT INTO blobs (id, size, data) VALUES (:id, 22, :d)"),
                     {"id": blob, "d": b"orphan until committed"})

    def repair_meanwhile(step: str) -> None:
        if step == "blobs_staged":
            with store.engine.begin() as conn:
                conn.execute(text("DELETE FROM blobs WHERE id = :id"), {"id": blob})

    monkeypatch.setattr(objects, "_fault", repair_meanwhile)
    with pytest.raises(StoreError, match="were removed while it was committed"):
        store.commit_dir(out, message="first")
    monkeypatch.setattr(objects, "_fault", None)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM commits")).scalar() == 0
    commit = store.commit_dir(out, message="first")  # again: the blob is stored anew
    assert store.read_blob(store.tree(commit)["a.txt"].blob) == b"orphan until committed"


@pytest.mark.parametrize(
    ("db_url", "message"),
    [("notaurl://", "'notaurl://' is not a database URL SQLAlchemy can open"),
     ("sqlite:///{file}/x.db", "cannot make the directory of the store")],
)
def test_a_store_that_cannot_be_opened_is_a_store_error_naming_it(tmp_path, db_url, message):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(StoreError, match=message):
        open_store(db_url.format(file=tmp_path / "file"), tmp_path / "blobs")


@pytest.mark.parametrize(
    ("storage", "message"),
    [({"db_url": "notaurl"}, "storage.db_url: 'notaurl' is not a database URL"),
     ({"inline_max": -1}, "storage.inline_max: -1 is not a size"),
     ({"inline_max": "big"}, "storage.inline_max: 'big' is not a size"),
     ({"inline_max": True}, "storage.inline_max: True is not a size")],
)
def test_bad_storage_values_name_their_key(tmp_path, storage, message):
    from wtb_conf.config.models import storage_spec

    good = {"db_url": "sqlite:///data/wtb.db", "blob_root": "data/blobs",
            "checkpoints": "data/checkpoints.db", "inline_max": 65536}
    assert storage_spec(good, tmp_path).inline_max == 65536
    with pytest.raises(StoreError, match=message):
        storage_spec(good | storage, tmp_path)


# -- what the job's identity leaves out (wtb_conf.job.identity), as docs/config.md says ----------


def _documented_non_identity() -> list[str]:
    doc = (Path(__file__).parent.parent / "docs/config.md").read_text()
    match = re.search(r"A job's identity is the digest of its resolved config \(without (.*?)\)",
                      doc, re.S)
    assert match, "docs/config.md no longer says which keys the job's identity leaves out"
    return re.findall(r"`([^`]+)`", match.group(1))


def test_config_digest_leaves_out_exactly_the_documented_keys():
    from omegaconf import OmegaConf

    from wtb_conf.job.identity import NOT_IDENTITY, SCORING_KEYS, config_digest

    documented = _documented_non_identity()
    assert sorted(documented) == sorted([*NOT_IDENTITY, *(f"workflow.{k}" for k in
                                                           SCORING_KEYS)])
    base = {"workflow": {"nodes": {"a": {"_target_": "m.f", "k": 1}}, "cases": {"c": {"x": 1}},
                         "evaluators": {"e": {"_target_": "m.e"}}, "expected": {"c": {}}},
            "storage": {"db_url": "sqlite:///a.db"}, "rerun": False, "share_prefixes": True,
            "compare": {"objective": None, "mode": "max"}, "env": {"packages": []},
            "fork": None}
    digest = config_digest(OmegaConf.create(base))
    for key in documented:  # changing (or dropping) a documented key keeps the identity
        changed = OmegaConf.create(base)
        OmegaConf.update(changed, key, {"changed": True}, force_add=True)
        assert config_digest(changed) == digest, key
    for key in ("workflow.nodes.a.k", "workflow.cases.c.x", "workflow.name", "env.packages",
                "fork", "variant"):  # any other key is part of it
        changed = OmegaConf.create(base)
        OmegaConf.update(changed, key, "changed", force_add=True)
        assert config_digest(changed) != digest, key


def test_repair_waits_for_a_commit_in_flight_and_keeps_the_blobs_it_names(store, tmp_path,
                                                                          monkeypatch):
    """An orphan blob a commit is about to name: `wtb fsck --repair` must not remove it under
    the commit. SQLite: repair's BEGIN IMMEDIATE waits for the commit's write lock;
    PostgreSQL: repair takes the 'blobs' lock that every commit holds shared."""
    import threading

    from wtb_conf.store import fsck, objects

    data = b"orphan until committed"
    blob = hashlib.sha256(data).hexdigest()
    with store.engine.begin() as conn:  # stored, but no commit reaches it: an orphan
        conn.execute(text("INSERT INTO blobs (id, size, data) VALUES (:i, :s, :d)"),
                     {"i": blob, "s": len(data), "d": data})
    report = fsck.check(store, None)
    assert report.orphans["blobs"] == [blob]
    inside, release = threading.Event(), threading.Event()

    def pause(step: str) -> None:  # the commit holds its transaction open here
        if step == "in_transaction":
            inside.set()
            assert release.wait(30)

    monkeypatch.setattr(objects, "_fault", pause)
    commits, repairs = [], []
    committer = threading.Thread(target=lambda: commits.append(
        store.commit_dir(write(tmp_path / "out", {"a.txt": data}), "first")))
    committer.start()
    assert inside.wait(30)
    repairer = threading.Thread(target=lambda: repairs.append(fsck.repair(store, report)))
    repairer.start()
    repairer.join(1.0)
    assert repairer.is_alive(), "repair did not wait for the commit in flight"
    release.set()
    committer.join(30)
    repairer.join(60)
    assert commits and repairs and repairs[0].removed["blobs"] == []
    assert store.read_blob(store.tree(commits[0])["a.txt"].blob) == data
    assert store.fsck() == []


def test_a_forked_worker_never_uses_its_parents_connection(pg_url, tmp_path):
    """PostgreSQL only (a SQLite connection is a file, not a session): local workers are forked
    from the command, with its store's pool. A socket both processes use at once would mix
    their messages; the child makes its own connection, and the parent's stays usable."""
    with open_store(pg_url, tmp_path / "blobs") as store:
        parent_sweep = store.create_sweep(["parent"])  # the pool now holds a connection
        pid = os.fork()
        if pid == 0:  # the worker, busy while the parent queries: any failure is its status
            code = 1
            try:
                for _ in range(20):
                    with store.engine.begin() as conn:
                        conn.execute(text("SELECT pg_sleep(0.01)"))
                child_sweep = store.create_sweep(["child"])
                code = 0 if store.sweep(child_sweep)["argv"] == ["child"] else 2
            finally:
                os._exit(code)
        for _ in range(50):
            assert store.sweep(parent_sweep)["argv"] == ["parent"]
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with store.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM sweeps")).scalar_one() == 2
