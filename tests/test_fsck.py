"""`wtb fsck`: a small store broken one way at a time, the repair, the CLI, and a real sweep."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import conftest
import pytest
from conftest import copy_project, run_bench, sha, write
from langgraph.checkpoint.sqlite import SqliteSaver
from sqlalchemy import text

from wtb_conf.cli import main
from wtb_conf.cli import wtb as wtb_cli
from wtb_conf.job.checkpointer import Checkpoints
from wtb_conf.store import fsck, liveness, open_store

BIG = b"big " * 600  # above the fixture's inline_max: a blob file
DEAD_PID = 4194305  # above Linux's highest possible pid_max: no such process, ever
OLD = time.time() - 2 * fsck.GRACE_S  # an orphan file older than the grace period


def settle(store, root: Path) -> None:
    """Wait until the filesystem clock has passed the files' ctime, so that the commit caches
    their stat (a file written in the commit's clock tick is "racy" and left out)."""
    newest = max(p.lstat().st_ctime_ns for p in root.rglob("*"))
    deadline = time.monotonic() + 5
    while store._fs_now() <= newest and time.monotonic() < deadline:
        time.sleep(0.001)


class World:
    """A store with one finished sweep: a run whose case committed twice (a small file, a
    big one, a symlink), its checkpoint links, and the LangGraph file they point into."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db, self.blobs, self.cps = tmp / "wtb.db", tmp / "blobs", tmp / "checkpoints.db"
        self.store = open_store(str(self.db), self.blobs, inline_max=1024)
        s = self.store
        case = write(tmp / "case", {"a.txt": b"one", "data/big.bin": BIG})
        os.symlink("data/big.bin", case / "link")
        self.sweep = s.create_sweep(["-m"])
        self.run = s.start_run(self.sweep, 0, [], "w", "{}", "d", str(tmp))
        s.start_thread(self.run, f"{self.run}/case", "case")
        settle(s, case)
        self.c1 = s.commit_dir(case, "cp1")
        (case / "a.txt").write_bytes(b"two")
        settle(s, case)
        self.c2 = s.commit_dir(case, "cp2", parent=self.c1)
        saver = sqlite3.connect(self.cps, check_same_thread=False)
        SqliteSaver(saver).setup()
        for step, (cp, commit) in enumerate([("cp-1", self.c1), ("cp-2", self.c2)]):
            s.link_checkpoint(self.run, f"{self.run}/case", "", cp, step, "loop", ["n"], commit)
            saver.execute("INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id) "
                          "VALUES (?, '', ?)", (f"{self.run}/case", cp))
        saver.commit()
        saver.close()
        s.finish_thread(f"{self.run}/case", "completed", {}, self.c2)
        s.finish_run(self.run, "completed", self.c2)
        s.finish_sweep(self.sweep)

    def sql(self, sql: str, *params) -> None:
        """Raw SQL with foreign keys off: how a broken store gets broken."""
        con = sqlite3.connect(self.db)
        con.execute(sql, params)
        con.commit()
        con.close()

    def tree(self, commit: str) -> str:
        with self.store.engine.connect() as c:
            return c.execute(text("SELECT tree FROM commits WHERE id = :c"),
                             {"c": commit}).scalar_one()

    def file(self, blob: str) -> Path:
        return self.blobs / "objects" / blob[:2] / blob[2:]

    def check(self) -> fsck.Report:
        return fsck.check(self.store, Checkpoints(self.cps))


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def old_file(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (OLD, OLD))
    return path


# -- breakers: each breaks the world one way and returns the object the message must name --

def missing_blob_file(w):
    w.file(sha(BIG)).unlink()
    return sha(BIG)


def corrupt_inline_blob(w):
    w.sql("UPDATE blobs SET data = ? WHERE id = ?", b"tampered", sha(b"two"))
    return sha(b"two")


def corrupt_file_blob(w):
    os.chmod(w.file(sha(BIG)), 0o644)
    w.file(sha(BIG)).write_bytes(b"bitrot" + BIG[6:])
    return sha(BIG)


def corrupt_symlink_blob(w):
    w.sql("UPDATE blobs SET data = ? WHERE id = ?", b"elsewhere", sha(b"data/big.bin"))
    return sha(b"data/big.bin")


def missing_tree(w):
    w.sql("DELETE FROM blobs WHERE id = ?", w.tree(w.c2))
    return w.c2


def link_to_missing_commit(w):
    w.sql("UPDATE checkpoint_links SET commit_id = ? WHERE checkpoint_id = 'cp-1'", "0" * 64)
    return "cp-1"


def link_to_missing_checkpoint(w):
    con = sqlite3.connect(w.cps)
    con.execute("DELETE FROM checkpoints WHERE checkpoint_id = 'cp-2'")
    con.commit()
    con.close()
    return "cp-2"


def run_without_its_event(w):
    w.sql("DELETE FROM events WHERE kind = 'run_completed'")
    return w.run


def sweep_without_its_event(w):
    w.sql("DELETE FROM events WHERE kind = 'sweep_finished'")
    return w.sweep


def running_run_of_a_dead_process(w):
    run = w.store.start_run(w.sweep, 1, [], "w", "{}", "d", str(w.tmp))
    w.sql("UPDATE runs SET owner_host = ?, owner_pid = ? WHERE id = ?",
          liveness.host(), DEAD_PID, run)
    return run


def orphan_blob_file(w):
    blob = sha(b"stray")
    old_file(w.file(blob), b"stray")
    return blob


def orphan_blob_row(w):
    w.sql("INSERT INTO blobs (id, size, data) VALUES (?, 8, ?)", sha(b"nobody's"), b"nobody's")
    return sha(b"nobody's")


def orphan_cached_blob(w):
    orphan_blob_row(w)
    w.sql("INSERT INTO stat_cache VALUES ('/gone', 'f', 8, 1, 1, 1, 420, ?)", sha(b"nobody's"))
    return sha(b"nobody's")


def leftover_tmp_file(w):
    return str(old_file(w.blobs / "objects" / ".tmp-k2j4h"))


BREAKS = [
    (missing_blob_file, {"missing_blob"}),
    (corrupt_inline_blob, {"corrupt_blob"}),
    (corrupt_file_blob, {"corrupt_blob"}),
    (corrupt_symlink_blob, {"corrupt_blob"}),
    # the blob only c2's tree reached (and the stat cache row of its file) is reached by
    # nothing now: listed, but not removed (see test_repair_never_deletes_under_a_lost_tree)
    (missing_tree, {"missing_tree", "orphan_blob", "orphan_stat_cache"}),
    (link_to_missing_commit, {"link_missing_commit"}),
    (link_to_missing_checkpoint, {"link_missing_checkpoint"}),
    (run_without_its_event, {"run_events"}),
    (sweep_without_its_event, {"sweep_events"}),
    (running_run_of_a_dead_process, {"lost_run"}),
    (orphan_blob_file, {"orphan_file"}),
    (orphan_blob_row, {"orphan_blob"}),
    (orphan_cached_blob, {"orphan_blob", "orphan_stat_cache"}),
    (leftover_tmp_file, {"orphan_tmp"}),
]


def test_a_whole_store_is_clean(world):
    report = world.check()
    assert report.clean, report.problems
    assert report.notes == []
    assert report.checked | {"files": 0} == {
        "commits": 2, "trees": 2, "blobs": 6, "blob_files": 1, "links": 2,
        "runs": 1, "sweeps": 1, "files": 0}


@pytest.mark.parametrize("brk,kinds", BREAKS, ids=[b.__name__ for b, _ in BREAKS])
def test_each_break_is_found_and_named(world, brk, kinds):
    obj = brk(world)
    report = world.check()
    assert set(report.by_kind()) == kinds
    named = [p for p in report.problems if obj in p.message]
    assert named and named[0].kind in kinds, report.problems
    assert not report.clean


def test_repair_fixes_orphans_and_lost_runs_and_keeps_what_commits_reach(world):
    run = running_run_of_a_dead_process(world)
    orphan_blob_file(world)
    orphan_cached_blob(world)
    leftover_tmp_file(world)
    report = world.check()
    assert set(report.by_kind()) == {"lost_run", "orphan_file", "orphan_blob",
                                     "orphan_stat_cache", "orphan_tmp"}
    done = fsck.repair(world.store, report)
    assert done.reaped["runs"] == [run] and done.skipped == []
    assert done.removed["blobs"] == [sha(b"nobody's")]
    after = world.check()
    assert after.clean, after.problems
    assert world.store.run(run)["status"] == "failed"
    assert world.store.events(run)[-1]["kind"] == "run_lost"
    for commit in (world.c1, world.c2):  # every blob a commit reaches is still there
        world.store.restore(commit, world.tmp / f"restored-{commit[:6]}")
    assert world.file(sha(BIG)).is_file()


@pytest.mark.parametrize("forged", ["../../../outside", "/etc/passwd"])
def test_a_forged_blob_id_is_reported_and_repaired_without_touching_a_path(world, forged):
    """A blobs row whose id is no digest (a store edited by hand, or by someone hostile)
    is one problem for fsck, and --repair removes the row but unlinks nothing it names."""
    (world.tmp / "outside").write_text("not the store's")
    world.sql("INSERT INTO blobs (id, size, data) VALUES (?, 6, NULL)", forged)
    report = world.check()
    assert [(p.kind, p.object) for p in report.problems] == [("orphan_blob", forged)]
    done = fsck.repair(world.store, report)
    assert done.removed["blobs"] == [forged]
    assert world.check().clean
    assert (world.tmp / "outside").read_text() == "not the store's"


def test_repair_keeps_an_orphan_a_commit_reaches_after_the_check(world):
    orphan_blob_row(world)  # inline
    big2 = b"another big " * 200
    old_file(world.file(sha(big2)), big2)  # a file no row names
    report = world.check()
    assert set(report.orphans["blobs"]) == {sha(b"nobody's")}
    assert report.orphans["files"] == [str(world.file(sha(big2)))]
    # ... which a commit made between the check and the repair reuses
    adopt = world.store.commit_dir(write(world.tmp / "later", {"x": b"nobody's", "y": big2}))
    done = fsck.repair(world.store, report)
    assert done.removed == {"files": [], "blobs": [], "stat_cache": []}
    assert world.check().clean
    world.store.restore(adopt, world.tmp / "adopted")
    assert (world.tmp / "adopted/y").read_bytes() == big2


def test_repair_never_deletes_under_a_lost_tree(world):
    missing_tree(world)
    missing_blob_file(world)  # its file reached by c1 is missing: the row is kept, so ...
    world.sql("DELETE FROM blobs WHERE id = ?", sha(b"one"))
    old_file(world.file(sha(b"one")), b"one")  # ... is a file whose row is lost
    report = world.check()
    assert report.orphans["blobs"] == [sha(b"two")] and report.orphans["files"] == []
    done = fsck.repair(world.store, report)
    assert done.removed["files"] == done.removed["blobs"] == []  # (the cache rows may go)
    assert "tree is missing" in done.skipped[0]
    assert world.check().orphans["blobs"] == [sha(b"two")]
    assert world.file(sha(b"one")).exists()


def test_young_orphans_are_notes_and_stay(world):
    young = world.blobs / "objects" / ".tmp-inflight"
    young.write_bytes(b"half")
    report = world.check()
    assert report.clean and any(str(young) in n and "in flight" in n for n in report.notes)
    fsck.repair(world.store, report)
    assert young.exists()


def test_repair_deletes_no_orphan_while_a_run_is_running(world):
    world.store.start_run(world.sweep, 1, [], "w", "{}", "d", str(world.tmp))  # ours: alive
    tmp = leftover_tmp_file(world)
    done = fsck.repair(world.store, world.check())
    assert Path(tmp).exists() and "is still running" in done.skipped[0]


def test_another_hosts_running_run_is_a_note(world):
    run = world.store.start_run(world.sweep, 1, [], "w", "{}", "d", str(world.tmp))
    world.sql("UPDATE runs SET owner_host = 'elsewhere/1234' WHERE id = ?", run)
    report = world.check()
    assert report.clean
    assert any(run in n and "elsewhere" in n for n in report.notes)


def test_missing_checkpoints_file_is_one_clear_problem(world):
    world.cps.unlink()
    report = world.check()
    [problem] = report.problems
    assert problem.kind == "checkpoints_file" and str(world.cps) in problem.message


def test_store_fsck_delegates(world):
    assert world.store.fsck() == []
    corrupt_file_blob(world)
    assert any("is corrupted" in p for p in world.store.fsck())


# -- the command line --------------------------------------------------------------------

def wtb(world, *args: str, capsys) -> tuple[int, str]:
    code = main(["--db", str(world.db), "--blobs", str(world.blobs), "fsck",
                 "--checkpoints", str(world.cps), *args])
    return code, capsys.readouterr().out


def test_cli_exit_codes_json_and_repair(world, capsys):
    assert wtb(world, "--json", capsys=capsys)[0] == 0
    blob = orphan_blob_file(world)
    run = running_run_of_a_dead_process(world)
    code, out = wtb(world, capsys=capsys)
    assert code == 1
    assert "orphan_file: 1" in out and "lost_run: 1" in out and blob in out and run in out
    assert "--repair: delete the file" in out
    code, out = wtb(world, "--json", capsys=capsys)
    doc = json.loads(out)
    assert code == 1 and doc["clean"] is False and doc["repaired"] is None
    assert doc["counts"] == {"lost_run": 1, "orphan_file": 1}
    assert doc["lost"] == {"runs": [run], "sweeps": []}
    assert {"kind", "object", "message", "repair"} == set(doc["problems"][0])
    code, out = wtb(world, "--repair", "--json", capsys=capsys)
    doc = json.loads(out)
    assert code == 0 and doc["clean"] and doc["repaired"]["reaped"]["runs"] == [run]
    assert wtb(world, capsys=capsys) == (0, wtb(world, capsys=capsys)[1])


def test_cli_is_read_only_without_repair_and_usage_errors_exit_2():
    fsck = wtb_cli.commands["fsck"]
    assert fsck.opens_readonly(fsck.make_context("fsck", []).params) is True
    params = fsck.make_context("fsck", ["--repair"]).params
    assert fsck.opens_readonly(params) is False and params["repair"] is True
    assert main(["fsck", "--bogus"]) == 2


@pytest.mark.slow
def test_a_real_sweep_is_clean(tmp_path):
    project = copy_project(tmp_path)
    run_bench(project, "-m", "workflow=file_processing", "variant=drop_invalid",
              "hydra/launcher=basic")
    assert conftest.wtb(project, "fsck").stdout.rstrip().endswith("clean")
    doc = json.loads(conftest.wtb(project, "fsck", "--json").stdout)
    assert doc["clean"] and doc["problems"] == []
    assert doc["checked"]["links"] > 0 and doc["checked"]["runs"] == 1


# -- whatever the store holds, fsck reports it: one line per problem, never a traceback --

def crafted_tree(w, entries) -> str:
    """Point c2 at a tree of these entries that hashes to its id (as a hostile or buggy
    writer could make it), or at these raw bytes; returns c2."""
    data = entries if isinstance(entries, bytes) else json.dumps(
        {"format": 1, "entries": entries}, separators=(",", ":")).encode()
    w.sql("INSERT INTO blobs (id, size, data) VALUES (?, ?, ?)", sha(data), len(data), data)
    w.sql("UPDATE commits SET tree = ? WHERE id = ?", sha(data), w.c2)
    return w.c2


def updated(sql: str, obj, *params):
    """A corruption made by one UPDATE; `obj(w)`: what the message must name."""
    def brk(w):
        w.sql(sql, *[p(w) if callable(p) else p for p in params])
        return obj(w) if callable(obj) else obj
    return brk


TWO, ONE = sha(b"two"), sha(b"one")
CORRUPTIONS = [
    # (name, break, a kind fsck must report)
    ("inline blob is TEXT (SQLite's ||)", updated(
        "UPDATE blobs SET data = CAST('garbage' AS BLOB) || data WHERE id = ?", TWO, TWO),
     "corrupt_blob"),
    ("inline blob is an integer", updated("UPDATE blobs SET data = 42 WHERE id = ?", ONE, ONE),
     "corrupt_blob"),
    ("inline blob is NULL: a file that is not there", updated(
        "UPDATE blobs SET data = NULL WHERE id = ?", TWO, TWO), "missing_blob"),
    ("blob size is text", updated("UPDATE blobs SET size = 'abc' WHERE id = ?", TWO, TWO),
     "corrupt_blob"),
    ("blob size is wrong", updated("UPDATE blobs SET size = 99 WHERE id = ?", TWO, TWO),
     "corrupt_blob"),
    ("file blob size is text", updated("UPDATE blobs SET size = 'big' WHERE id = ?", sha(BIG),
                                       sha(BIG)), "corrupt_blob"),
    ("blob id is bytes", updated("UPDATE blobs SET id = x'00ff' WHERE id = ?",
                                 repr(b"\x00\xff"), ONE), "corrupt_row"),
    ("commit id is bytes", updated("UPDATE commits SET id = x'00ff' WHERE id = ?",
                                   repr(b"\x00\xff"), lambda w: w.c1), "corrupt_row"),
    ("blob id is too short", updated("UPDATE blobs SET id = substr(id, 1, 10) WHERE id = ?",
                                     ONE, ONE), "missing_blob"),
    ("tree is TEXT", updated("UPDATE blobs SET data = CAST(data AS TEXT) WHERE id = ?",
                             lambda w: w.c2, lambda w: w.tree(w.c2)), "corrupt_tree"),
    ("tree is NULL", updated("UPDATE blobs SET data = NULL WHERE id = ?", lambda w: w.c2,
                             lambda w: w.tree(w.c2)), "missing_tree"),
    ("commit's tree is an integer", updated("UPDATE commits SET tree = 7 WHERE id = ?",
                                            lambda w: w.c2, lambda w: w.c2), "missing_tree"),
    ("commit's parent is bytes", updated("UPDATE commits SET parent = x'00ff' WHERE id = ?",
                                         lambda w: w.c2, lambda w: w.c2), "missing_commit"),
    ("tree is not JSON", lambda w: crafted_tree(w, b"{not json"), "corrupt_tree"),
    ("tree is not UTF-8", lambda w: crafted_tree(w, b"\xff\xfe"), "corrupt_tree"),
    ("tree is a JSON list", lambda w: crafted_tree(w, b"[1, 2]"), "corrupt_tree"),
    ("tree's entries are a number", lambda w: crafted_tree(w, b'{"format":1,"entries":5}'),
     "corrupt_tree"),
    ("tree entry's blob is a number", lambda w: crafted_tree(w, [["a.txt", 5, 3, 0o644]]),
     "corrupt_tree"),
    ("tree entry's path is a number", lambda w: crafted_tree(w, [[1, TWO, 3, 0o644]]),
     "corrupt_tree"),
    ("tree entry has three fields", lambda w: crafted_tree(w, [["a.txt", TWO, 3]]),
     "corrupt_tree"),
    ("tree entry's size is negative", lambda w: crafted_tree(w, [["a.txt", TWO, -3, 0o644]]),
     "corrupt_tree"),
    ("tree entry's mode is text", lambda w: crafted_tree(w, [["a.txt", TWO, 3, "rwx"]]),
     "corrupt_tree"),
    ("tree entry's size disagrees with its blob",
     lambda w: crafted_tree(w, [["a.txt", TWO, 4000, 0o644]]), "corrupt_tree"),
    ("tree entry's path leaves the tree",
     lambda w: crafted_tree(w, [["../a.txt", TWO, 3, 0o644]]), "unsafe_tree"),
    ("tree has a file x and a file x/y",
     lambda w: crafted_tree(w, [["x", TWO, 3, 0o644], ["x/y", ONE, 3, 0o644]]), "unsafe_tree"),
    ("stat cache names an integer blob", updated("UPDATE stat_cache SET blob = 5", "5"),
     "orphan_stat_cache"),
    ("link's checkpoint id is bytes", updated(
        "UPDATE checkpoint_links SET checkpoint_id = x'00ff' WHERE checkpoint_id = 'cp-1'",
        lambda w: w.run), "link_missing_checkpoint"),
    ("run's status is an integer", updated("UPDATE runs SET status = 5", lambda w: w.run),
     "run_events"),
    ("running run's owner pid is text", lambda w: (w.sql(
        "UPDATE runs SET status = 'running', owner_host = ?, owner_pid = 'abc', "
        "owner_started = 'x'", liveness.host()), w.run)[1], "run_events"),
]


@pytest.mark.parametrize("name,brk,kind", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_fsck_reports_every_corruption_in_one_line_and_never_crashes(world, capsys, name, brk,
                                                                     kind):
    obj = brk(world)
    report = world.check()
    assert kind in report.by_kind(), report.problems
    assert any(str(obj) in p.message for p in report.problems), report.problems
    assert all("\n" not in p.message for p in report.problems)
    code, out = wtb(world, capsys=capsys)
    assert code == 1 and "Traceback" not in out
    assert any(line.startswith(f"  {kind}: ") for line in out.splitlines()), out
    code, out = wtb(world, "--json", capsys=capsys)
    assert code == 1 and kind in json.loads(out)["counts"]
