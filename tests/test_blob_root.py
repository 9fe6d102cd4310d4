"""`storage.blob_root`: a directory (local or shared) or an object store (`s3://bucket/prefix`).

The store's blob behaviours run against both, the object store being moto's S3 server
(tests/s3server.py), reached over HTTP as S3 would be: commit and restore, unchanged
recommits, a corrupted or missing blob, `wtb fsck` and its repair. Then what a bad bucket,
missing credentials or an unreachable endpoint say, and the demo sweep with every blob on S3.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3server
from conftest import copy_project, run_bench, sha, write, wtb

from wtb_conf.cli import main
from wtb_conf.store import ObjectCorrupted, StoreError, fsck, open_store
from wtb_conf.store.blobdirs import FsspecBlobDir, LocalBlobDir, open_blob_dir

s3, s3_server = s3server.s3, s3server.s3_server  # the fixtures
INLINE_MAX = 1024
MIB = 1 << 20


def snapshot(root: Path) -> dict[str, bytes | str]:
    return {p.relative_to(root).as_posix(): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


class Dir:
    """A blob root that is a directory, and how a test looks at and breaks its files."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "blobs"
        self.url = str(self.root)

    def file(self, blob: str) -> Path:
        return self.root / "objects" / blob[:2] / blob[2:]

    def has(self, blob: str) -> bool:
        return self.file(blob).is_file()

    def stamp(self, blob: str) -> float:
        return self.file(blob).stat().st_ino  # a new upload would be a new file

    def put(self, blob: str, data: bytes) -> str:
        path = self.file(blob)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.chmod(path, 0o644)
        path.write_bytes(data)
        return str(path)

    def delete(self, blob: str) -> None:
        self.file(blob).unlink()


class S3:
    """A blob root in a bucket of the test's S3 server."""

    def __init__(self, bucket) -> None:
        self.bucket = bucket
        self.url = bucket.url

    def has(self, blob: str) -> bool:
        return self.bucket.key(blob) in self.bucket.keys()

    def stamp(self, blob: str) -> float:
        return self.bucket.modified(self.bucket.key(blob))

    def put(self, blob: str, data: bytes) -> str:
        self.bucket.put(self.bucket.key(blob), data)
        return f"{self.url}/objects/{blob[:2]}/{blob[2:]}"

    def delete(self, blob: str) -> None:
        self.bucket.delete(self.bucket.key(blob))


@pytest.fixture(params=["dir", "s3"])
def where(request, tmp_path):
    return Dir(tmp_path) if request.param == "dir" else S3(request.getfixturevalue("s3"))


@pytest.fixture
def store(where, tmp_path):
    with open_store(str(tmp_path / "wtb.db"), where.url, inline_max=INLINE_MAX) as s:
        yield s


def settle(store, root: Path) -> None:
    """Backdate the files and wait until the clock the store reads has passed their ctime, so
    that a commit caches their stat (a file of the commit's clock tick is "racy")."""
    t = time.time() - 10
    for p in root.rglob("*"):
        os.utime(p, (t, t), follow_symlinks=False)
    newest = max(p.lstat().st_ctime_ns for p in root.rglob("*"))
    deadline = time.monotonic() + 5
    while store._fs_now(str(root)) <= newest and time.monotonic() < deadline:
        time.sleep(0.001)


def test_the_scheme_picks_the_blob_root(tmp_path):
    assert isinstance(open_blob_dir(tmp_path / "b"), LocalBlobDir)
    assert isinstance(open_blob_dir("data/blobs"), LocalBlobDir)
    local = open_blob_dir(f"file://{tmp_path}/b")
    assert isinstance(local, LocalBlobDir) and local.root == str(tmp_path / "b")
    remote = open_blob_dir("s3://bucket/some/prefix/")
    assert isinstance(remote, FsspecBlobDir) and remote.objects == "s3://bucket/some/prefix/objects"
    # only S3's uploads are whole or nothing; other file systems write objects in place
    for url, why in [("nosuch://x/y", "not 'nosuch'"), ("sftp://h/b", "not 'sftp'"),
                     ("memory://b", "not 'memory'"),
                     ("simplecache::s3://b/x", "a chained fsspec URL cannot hold blobs")]:
        with pytest.raises(StoreError, match=re.escape(why)):
            open_store(str(tmp_path / "wtb.db"), url)


def test_commit_and_restore_give_the_same_bytes(store, where, tmp_path):
    """Inline, one-PUT and multipart-sized blobs (above FsspecBlobDir.PART), a link."""
    files = {"small.txt": b"small", "big.bin": os.urandom(5000),
             "sub/huge.bin": os.urandom(FsspecBlobDir.PART + 3 * MIB + 17), "empty": b""}
    src = write(tmp_path / "src", files)
    os.symlink("sub/huge.bin", src / "link")
    commit = store.commit_dir(src, "first")
    assert store.last_commit.new_blobs == 6  # 4 contents, the link's target, the tree
    assert where.has(sha(files["big.bin"])) and where.has(sha(files["sub/huge.bin"]))
    assert not where.has(sha(b"small"))  # inline: a row
    store.restore(commit, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == snapshot(src)
    assert store.fsck() == []
    if isinstance(where, S3):  # nothing landed on local disk instead
        assert not list(tmp_path.glob("s3*")) and not (tmp_path / "blobs").exists()
        assert all(k.startswith("blobs/objects/") for k in where.bucket.keys())


def test_an_unchanged_recommit_stores_nothing_and_a_stored_blob_is_not_sent_again(
        store, where, tmp_path, monkeypatch):
    big = os.urandom(6000)
    src = write(tmp_path / "src", {"a.bin": big, "b.txt": b"b"})
    settle(store, src)
    first = store.commit_dir(src, "first")
    before = where.stamp(sha(big))
    placed = []
    for name in ("place", "write"):
        real = getattr(store.blobs, name)
        monkeypatch.setattr(store.blobs, name,
                            lambda *a, _real=real, _n=name: placed.append(_n) or _real(*a))
    assert store.commit_dir(src, "first") == first
    assert store.last_commit.hashed == 0 and store.last_commit.new_blobs == 0
    assert placed == []  # the stat cache: not even read
    # The same bytes elsewhere are read and hashed, and found stored: not sent again.
    if isinstance(where, S3):
        monkeypatch.setattr(store.blobs, "_upload", lambda *a: pytest.fail("uploaded again"))
    other = write(tmp_path / "other", {"copy.bin": big})
    store.commit_dir(other, "other")
    assert placed == ["place"] and store.last_commit.new_blobs == 1  # (its tree)
    assert where.stamp(sha(big)) == before


def test_a_reused_object_that_is_old_is_refreshed_not_uploaded(s3, tmp_path, monkeypatch):
    """`fsck --repair` removes an orphan older than an hour: an old object a commit reuses is
    made young again (copied onto itself, server-side) so that repair cannot take it."""
    big = os.urandom(6000)
    with open_store(str(tmp_path / "wtb.db"), s3.url, INLINE_MAX) as store:
        store.commit_dir(write(tmp_path / "a", {"big.bin": big}))
        before = s3.modified(s3.key(sha(big)))
        time.sleep(1.1)  # LastModified has whole seconds
        monkeypatch.setattr(store.blobs, "_upload", lambda *a: pytest.fail("uploaded again"))
        store.commit_dir(write(tmp_path / "b", {"big.bin": big}))
        assert s3.modified(s3.key(sha(big))) == before  # young enough: left as it is
        monkeypatch.setattr(store.blobs, "REFRESH_S", 0.5)
        store.commit_dir(write(tmp_path / "c", {"big.bin": big}))
        assert s3.modified(s3.key(sha(big))) > before
        assert s3.get(s3.key(sha(big))) == big


@pytest.mark.parametrize("how", ["corrupted", "missing"])
def test_a_corrupted_or_missing_blob_is_named_and_nothing_is_restored(store, where, tmp_path,
                                                                      how):
    big = os.urandom(5000)
    commit = store.commit_dir(write(tmp_path / "src", {"out/big.bin": big}), "first")
    blob = sha(big)
    if how == "corrupted":
        where.put(blob, b"bitrot" + big[6:])
        words = "is corrupted: its bytes hash to"
    else:
        where.delete(blob)
        words = f"is corrupted: {store.blobs.path(blob)} is missing"
    with pytest.raises(ObjectCorrupted, match=f"blob {blob} .*{words}"):
        store.read_blob(blob)
    with pytest.raises(ObjectCorrupted, match=rf"blob {blob} \(file out/big.bin\) {words}"):
        store.restore(commit, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not list(tmp_path.glob(".dest.restoring-*"))


def test_fsck_finds_corrupted_missing_and_orphan_blobs(store, where, tmp_path):
    a, b = os.urandom(3000), os.urandom(4000)
    store.commit_dir(write(tmp_path / "src", {"a.bin": a, "b.bin": b}), "first")
    report = fsck.check(store, None)
    assert report.clean and report.checked["files"] == 2  # (the tree is inline)
    where.put(sha(a), b"not a")
    where.delete(sha(b))
    orphan = os.urandom(2000)
    orphan_at = where.put(sha(orphan), orphan)
    report = fsck.check(store, None, grace=0)
    found = {p.kind: p for p in report.problems}
    assert set(found) == {"corrupt_blob", "missing_blob", "orphan_file"}
    assert sha(a) in found["corrupt_blob"].message and "a.bin" in found["corrupt_blob"].message
    assert sha(b) in found["missing_blob"].message and "is missing" in found["missing_blob"].message
    assert report.orphans["files"] == [orphan_at]


@pytest.mark.slow
def test_repair_removes_only_orphans_older_than_the_grace_period(store, where, tmp_path):
    """Their age is the file's mtime, or the object's LastModified (the server's clock)."""
    kept = os.urandom(3000)
    commit = store.commit_dir(write(tmp_path / "src", {"kept.bin": kept}), "first")
    old, young = os.urandom(2000), os.urandom(2001)
    old_at = where.put(sha(old), old)
    # S3's LastModified has whole seconds (an object may look up to 1 s older); the young
    # one must stay under the grace through both checks and the repair, on a loaded machine
    time.sleep(8)
    young_at = where.put(sha(young), young)
    report = fsck.check(store, None, grace=6)
    assert [(p.kind, p.object) for p in report.problems] == [("orphan_file", old_at)]
    assert any(young_at in n and "in flight" in n for n in report.notes)
    done = fsck.repair(store, report)
    assert done.removed["files"] == [old_at]
    assert not where.has(sha(old)) and where.has(sha(young)) and where.has(sha(kept))
    assert fsck.check(store, None, grace=6).clean
    store.restore(commit, tmp_path / "dest")
    assert (tmp_path / "dest/kept.bin").read_bytes() == kept


KILLED = 86
CRASH = r"""
import os, sys
from wtb_conf.store import objects, open_store

db, blobs, src, step = sys.argv[1:]
if step == "mid_upload":  # os._exit once a part of the multipart upload is on the server
    import s3fs.core

    upload_chunk = s3fs.core.S3File._upload_chunk

    def dying(self, final=False):
        out = upload_chunk(self, final)
        if self.parts:
            os._exit(86)
        return out

    s3fs.core.S3File._upload_chunk = dying
else:  # os._exit at that step of commit_dir, as in tests/reliability/test_commit_faults.py
    objects._fault = lambda name: name == step and os._exit(86)
open_store(db, blobs, inline_max=1024).commit_dir(src, "crashed")
"""


@pytest.mark.parametrize("step", ["blob_copied", "mid_upload", "blob_written", "blobs_staged"])
def test_a_commit_killed_while_it_uploads_leaves_no_partial_object(s3, tmp_path, step):
    """A kill -9 before, during (a multipart upload with a part sent) or after an upload: no
    object is ever partial under its name, and what is left is an orphan that fsck --repair
    removes."""
    huge = os.urandom(FsspecBlobDir.PART + MIB)
    src = write(tmp_path / "src", {"huge.bin": huge, "small.bin": os.urandom(500)})
    db = str(tmp_path / "wtb.db")
    proc = subprocess.run([sys.executable, "-c", CRASH, db, s3.url, str(src), step],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == KILLED, proc.stderr
    key = s3.key(sha(huge))
    if key in s3.keys():
        assert step != "mid_upload" and s3.get(key) == huge  # whole, or not there
    else:
        assert step in ("blob_copied", "mid_upload")
    if step == "mid_upload":  # the parts sent wait, unseen, for the bucket's lifecycle rule
        assert s3.client.list_multipart_uploads(Bucket=s3.name).get("Uploads")
    with open_store(db, s3.url, INLINE_MAX) as store:
        report = fsck.check(store, None, grace=0)
        assert {p.kind for p in report.problems} <= {"orphan_file"}, report.problems
        fsck.repair(store, report)
        assert fsck.check(store, None, grace=0).clean
        commit = store.commit_dir(src, "again")
        store.restore(commit, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == snapshot(src)


def test_the_cli_restores_and_checks_a_store_whose_blobs_are_in_s3(s3, tmp_path, capsys):
    big = os.urandom(5000)
    db = str(tmp_path / "wtb.db")
    with open_store(db, s3.url, inline_max=INLINE_MAX) as store:
        sweep = store.create_sweep(["-m"])
        run = store.start_run(sweep, 0, [], "w", "{}", "d", str(tmp_path))
        commit = store.commit_dir(write(tmp_path / "src", {"big.bin": big}), "first")
        store.finish_run(run, "completed", commit)
        store.finish_sweep(sweep)
    wtb = ["--db", db, "--blobs", s3.url]
    assert main([*wtb, "restore", run, "--to", str(tmp_path / "dest")]) == 0
    assert (tmp_path / "dest/big.bin").read_bytes() == big
    assert main([*wtb, "fsck"]) == 0
    s3.put(s3.key(sha(big)), b"bitrot")
    capsys.readouterr()
    assert main([*wtb, "fsck"]) == 1
    assert f"blob {sha(big)}" in capsys.readouterr().out


# -- what a blob root that cannot work says -----------------------------------------------

def one_line_error(tmp_path, blob_root: str) -> str:
    with pytest.raises(StoreError) as err:
        open_store(str(tmp_path / "wtb.db"), blob_root)
    message = str(err.value)
    assert "\n" not in message and blob_root in message
    return message


def test_a_bucket_that_does_not_exist(s3, tmp_path, capsys):
    message = one_line_error(tmp_path, "s3://no-such-bucket/blobs")
    assert "the bucket 'no-such-bucket' does not exist at endpoint http://127.0.0.1:" in message
    assert "create it, or set storage.blob_root to a bucket that exists" in message
    # a read-only command does not check first: it says so where it reads
    with open_store(str(tmp_path / "wtb.db"), s3.url, INLINE_MAX) as store:
        commit = store.commit_dir(write(tmp_path / "src", {"big.bin": os.urandom(5000)}))
    with open_store(str(tmp_path / "wtb.db"), "s3://no-such-bucket/blobs", INLINE_MAX,
                    readonly=True) as ro:
        with pytest.raises(StoreError, match="the bucket 'no-such-bucket' does not exist"):
            ro.restore(commit, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_no_credentials(s3, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    message = one_line_error(tmp_path, s3.url)
    assert "no credentials for it" in message and "set AWS_ACCESS_KEY_ID and " \
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)" in message


def test_an_endpoint_that_does_not_answer(s3, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries: not the point here
    message = one_line_error(tmp_path, s3.url)
    assert f"cannot reach the endpoint http://127.0.0.1:{port} (AWS_ENDPOINT_URL)" in message
    assert "check the URL and the network" in message


# -- end to end ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_demo_sweep_with_every_blob_in_s3(s3, tmp_path):
    """`python -m wtb_conf -m +experiment=demo` with storage.blob_root=s3://... and
    inline_max=0 (every blob an object, trees too); then `wtb restore` of every run on the
    driver gives its files back, and `wtb fsck` is clean. Nothing is mocked."""
    project = copy_project(tmp_path / "project")
    run_bench(project, "-m", "+experiment=demo", f"storage.blob_root={s3.url}",
              "storage.inline_max=0")
    keys = s3.keys()
    assert keys and all(k.startswith("blobs/objects/") for k in keys)
    assert not (project / "data/blobs").exists() and not list(project.rglob("s3:*"))
    with open_store(str(project / "data/wtb.db"), s3.url, readonly=True) as store:
        runs = store.runs(store.last_sweep())
        assert len(runs) == 4 and {r["status"] for r in runs} == {"completed"}
        trees = {r["run_id"]: store.tree(r["commit"]) for r in runs}
    for run in runs:
        dest = tmp_path / "restored" / run["run_id"]
        wtb(project, "--blobs", s3.url, "restore", run["run_id"], "--to", str(dest))
        job_out = Path(run["job_dir"]) / "out"
        assert sorted(trees[run["run_id"]]) == sorted(snapshot(dest))
        assert snapshot(dest) == {rel: (job_out / rel).read_bytes() for rel in snapshot(dest)}
        # every one of its blobs is an object in the bucket
        assert {s3.key(e.blob) for e in trees[run["run_id"]].values()} <= set(keys)
    proc = wtb(project, "--blobs", s3.url, "fsck")
    assert proc.stdout.rstrip().endswith("clean"), proc.stdout + proc.stderr
