from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from wtb_conf.store import ObjectCorrupted, UnsafePath, open_store


@pytest.fixture
def store(tmp_path):
    with open_store(str(tmp_path / "wtb.db"), tmp_path / "blobs", inline_max=1024) as s:
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


def test_schema_is_migrated_once_and_reopening_is_idempotent(tmp_path):
    db = str(tmp_path / "wtb.db")
    open_store(db, tmp_path / "b").close()
    with open_store(db, tmp_path / "b") as s, s.engine.connect() as c:
        versions = [r[0] for r in c.execute(text("SELECT v FROM wtb_migrations ORDER BY v"))]
    from wtb_conf.store.schema import MIGRATIONS

    assert versions == list(range(1, len(MIGRATIONS) + 1))
