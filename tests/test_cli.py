"""`wtb` against the store the demo sweep wrote: the --json shapes docs/cli.md promises."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_project, run_bench
from conftest import wtb as wtb_in

from wtb_conf.cli import main
from wtb_conf.cli.output import clip_json

RUN_KEYS = {"run_id", "sweep_id", "job_num", "status", "overrides", "workflow", "config_digest",
            "job_dir", "started_at", "finished_at", "error", "metrics", "commit", "checkpoints",
            "python", "env_id", "job_key", "cached_from", "parent_run", "launch_dir",
            "inputs_commit", "host", "ray_node"}


@pytest.fixture
def wtb(demo, monkeypatch, capsys):
    monkeypatch.chdir(demo)

    def call(*args: str, expect: int = 0):
        code = main(list(args))
        out = capsys.readouterr()
        assert code == expect, out.err
        return out

    return call


def jcall(wtb, *args):
    return json.loads(wtb(*args, "--json").out)


@pytest.mark.slow
def test_runs_json(wtb):
    runs = jcall(wtb, "runs", "--sweep", "last")
    assert len(runs) == 4 and all(set(r) == RUN_KEYS for r in runs)
    assert all(isinstance(r["checkpoints"], int) and r["checkpoints"] > 0 for r in runs)
    assert jcall(wtb, "runs", "--sweep", runs[0]["sweep_id"][:6]) == runs


def test_show_json_has_cases_checkpoints_and_final_state(wtb):
    run_id = jcall(wtb, "runs")[0]["run_id"]
    shown = jcall(wtb, "show", run_id[:8])
    assert RUN_KEYS <= set(shown)
    assert {"cases", "config_yaml", "traceback", "env_lock"} <= set(shown)
    assert any(p.startswith("hydra-core==") for p in shown["env_lock"])
    assert [c["case"] for c in shown["cases"]] == ["orders", "returns"]
    orders = shown["cases"][0]
    assert orders["final_state"]["rows_in"] == 12 and orders["final_state"]["log"][0] == "load"
    assert set(orders["checkpoints"][0]) == {"checkpoint_ns", "checkpoint_id", "step", "source",
                                             "nodes", "path", "commit"}
    assert sum(len(c["checkpoints"]) for c in shown["cases"]) == shown["checkpoints"]


def test_restore_checkpoint_and_final(wtb, tmp_path):
    # job 0 ran every node itself (the others may have inherited a shared prefix from it)
    shown = jcall(wtb, "show", jcall(wtb, "runs", "--sweep", "last")[0]["run_id"])
    cp = next(c for c in shown["cases"][1]["checkpoints"] if c["nodes"] == ["clean"])
    out = wtb("restore", shown["run_id"], "--checkpoint", cp["checkpoint_id"][:13],
              "--to", str(tmp_path / "cp"))
    assert "restored 2 files" in out.out
    assert sorted(p.name for p in (tmp_path / "cp").iterdir()) == ["clean.csv", "loaded.json"]
    wtb("restore", shown["run_id"], "--to", str(tmp_path / "final"))
    assert (tmp_path / "final/returns/report.md").is_file()
    err = wtb("restore", shown["run_id"], "--to", str(tmp_path / "final"), expect=1).err
    assert "not empty" in err


def test_diff_runs_and_commits(wtb):
    a, b = (r["run_id"] for r in jcall(wtb, "runs")[:2])
    d = jcall(wtb, "diff", a, b)
    assert set(d) == {"added", "removed", "changed"}
    commit = jcall(wtb, "show", a)["commit"]
    assert jcall(wtb, "diff", a, commit[:10]) == {"added": [], "removed": [], "changed": []}


def test_log_json(wtb):
    events = jcall(wtb, "log", "last")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_completed"
    assert {"node", "checkpoint", "commit"} <= set(kinds)
    assert all(set(e) == {"at", "kind", "data"} for e in events)


def test_bad_refs_are_clear_errors(wtb):
    assert "no run matches" in wtb("show", "ffff0000", expect=1).err
    assert "not an id" in wtb("show", "zz", expect=1).err
    assert "checkpoints of run" in wtb("restore", "last", "--checkpoint", "nope", "--to", "x",
                                       expect=1).err


def test_a_restore_target_that_cannot_be_written_is_named(wtb, tmp_path):
    (tmp_path / "file").write_text("in the way")
    err = wtb("restore", "last", "--to", str(tmp_path / "file" / "sub"), expect=1).err
    assert f"--to {tmp_path}/file/sub: cannot restore there: a file is in the way" in err
    err = wtb("restore", "last", "--to", "/proc/wtb/sub", expect=1).err  # nobody writes there
    assert "--to /proc/wtb/sub: cannot restore there: No such file or directory" in err
    assert "Traceback" not in err


def test_missing_store_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 2
    assert "no store at data/wtb.db" in capsys.readouterr().err


def test_console_script_runs(demo):
    proc = subprocess.run([sys.executable, "-m", "wtb_conf.cli", "runs", "--json"], cwd=demo,
                          capture_output=True, text=True, check=True)  # a new interpreter
    assert len(json.loads(proc.stdout)) == 4


@pytest.mark.parametrize("value, limit, shown", [
    ({"a": 1}, 2000, '{"a": 1}'),  # short: whole
    ({"log": ["load", "clean", "validate"]}, 20,
     '{"log": ["load" … (23 more characters; wtb show abcd1234 --json for all)'),
    ({"text": "one two three four"}, 16,
     '{"text": … (22 more characters; wtb show abcd1234 --json for all)'),
    ("one two three four", 10, '"one two … (12 more characters; wtb show abcd1234 --json for all)'),
])
def test_show_clips_the_final_state_at_a_token_and_says_so(value, limit, shown):
    assert clip_json(value, "abcd1234", limit) == shown


def test_show_clips_a_long_final_state_in_the_demo(wtb, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")  # one line, as rich would print it unwrapped
    run = jcall(wtb, "runs")[0]["run_id"]
    out = wtb("show", run[:8]).out
    state = json.dumps(jcall(wtb, "show", run)["cases"][0]["final_state"])
    assert len(state) > 2000  # the demo's rows: the clip is exercised
    line = next(x for x in out.splitlines() if x.startswith("final state:"))
    assert line.endswith(f"more characters; wtb show {run[:8]} --json for all)")
    kept = line.removeprefix("final state: ").partition(" … (")[0]
    assert state.startswith(kept) and state[len(kept)] in ",]}: "  # cut between tokens
    assert len(kept) <= 2000 and line.endswith(f"… ({len(state) - len(kept)} more characters; "
                                               f"wtb show {run[:8]} --json for all)")


@pytest.fixture
def project(demo, tmp_path):
    """A private copy of the demo project, for the commands that write."""
    dest = tmp_path / "project"
    shutil.copytree(demo, dest)
    return dest


def test_show_a_cache_hit_names_its_source_and_shows_its_cases(project, monkeypatch, capsys):
    run_bench(project, "-m", "+experiment=demo")  # every job a cache hit
    monkeypatch.chdir(project)
    assert main(["show", "last", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)
    assert hit["status"] == "cached"
    assert [c["case"] for c in hit["cases"]] == ["orders", "returns"]
    assert all(c["thread_id"].startswith(hit["cached_from"]) for c in hit["cases"])
    assert main(["show", "last"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # (rich wraps long lines)
    assert f"cache hit of run {hit['cached_from']}: nothing ran" in out
    assert "case orders (completed)" in out and "final state:" in out


def test_evaluate_with_a_bad_override_exits_1_and_records_nothing(project, monkeypatch,
                                                                  capsys):
    monkeypatch.chdir(project)
    db = project / "data/wtb.db"
    before = sqlite3.connect(db).execute("SELECT count(*) FROM evaluations").fetchone()[0]
    for override, message in [
        ("workflow.evaluators.total_ok.abs_tol=abc", "workflow.evaluators.total_ok.abs_tol: "
                                                     "'abc' is not a"),
        ("+workflow.evaluators.total_ok.abs_tl=1", "workflow.evaluators.total_ok.abs_tl"),
        ("compare.objective=nope", "compare.objective: 'nope' is not a metric"),
    ]:
        assert main(["evaluate", "last", override]) == 1, override
        err = capsys.readouterr().err
        assert message in err and "nothing scored, nothing recorded" in err, err
        assert "Traceback" not in err
    after = sqlite3.connect(db).execute("SELECT count(*) FROM evaluations").fetchone()[0]
    assert after == before
    assert main(["evaluate", "last", "workflow.evaluators.total_ok.abs_tol=100"]) == 0
    assert sqlite3.connect(db).execute("SELECT count(*) FROM evaluations").fetchone()[0] == \
        before + 4


README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
CLI_MD = (Path(__file__).resolve().parent.parent / "docs/cli.md").read_text()


def test_the_docs_say_wtb_runs_only_reads():
    runs = CLI_MD.partition("### wtb runs")[2].partition("###")[0]
    assert "records as failed" not in runs and "only reads" in runs


@pytest.mark.slow
def test_the_readme_tour_examples_change_what_the_user_sees(tmp_path):
    # its own sweep: a rollback replays in the run's launch dir, which a copy of `demo` is not
    project = copy_project(tmp_path)
    run_bench(project, "-m", "+experiment=demo")

    def wtb_(*args: str) -> subprocess.CompletedProcess:
        return wtb_in(project, *args)

    def total_ok() -> dict[int, float]:
        rows = json.loads(wtb_("compare", "--json").stdout)
        return {r["job_num"]: r["scores"]["total_ok"] for r in rows}

    override = re.search(r"^wtb evaluate last (\S+)", README, re.M).group(1)
    before = total_ok()
    wtb_("evaluate", "last", override)
    after = total_ok()
    assert after != before and after[0] > before[0]  # drop_invalid's total now passes

    change = re.search(r"^wtb resume NEW_RUN --set (\S+)", README, re.M).group(1)
    runs = json.loads(wtb_("runs", "--sweep", "last", "--json").stdout)
    run = next(r["run_id"] for r in runs if r["job_num"] == 1)  # max_invalid 0.3
    shown = json.loads(wtb_("show", run, "--json").stdout)
    orders = shown["cases"][0]
    assert "quarantine" not in orders["executed"] + orders["inherited"]
    cp = next(c["checkpoint_id"] for c in orders["checkpoints"] if c["nodes"] == ["validate"])
    back = wtb_("rollback", run, "--checkpoint", cp)
    paused = re.search(r"wtb: run (\w+) paused", back.stdout + back.stderr).group(1)
    done = wtb_("resume", paused, "--set", change)
    new = re.search(r"wtb: run (\w+) completed", done.stdout + done.stderr).group(1)
    resumed = json.loads(wtb_("show", new, "--json").stdout)["cases"][0]
    assert resumed["executed"] == ["quarantine", "summarize"]
    assert resumed["final_state"]["quarantined"] == 3


def _tol(state, key: str, abs_tol: float = 0.01, **more) -> bool:
    return True


def _strict(state, key: str, abs_tol: float = 0.01) -> bool:
    return True


@pytest.mark.parametrize("fn, params, message", [
    (_strict, {"key": "x", "abs_tol": 1}, None),
    (_strict, {"key": "x", "abs_tol": "abc"},
     "workflow.evaluators.ok.abs_tol: 'abc' is not a valid float (the type _strict() gives "
     "abs_tol)"),
    (_strict, {"key": "x", "abs_tl": 1},
     "workflow.evaluators.ok.abs_tl: _strict() takes no parameter 'abs_tl'; it takes key, "
     "abs_tol"),
    (_tol, {"key": "x", "anything": 1}, None),  # **more takes it
    (_tol, {"key": 3.5}, "workflow.evaluators.ok.key: 3.5 is not a valid str"),
])
def test_evaluator_params_are_checked_against_the_signature(fn, params, message):
    import functools

    from wtb_conf.cli.overrides import _check_params
    from wtb_conf.job.workflow import WorkflowError

    if message is None:
        _check_params("ok", functools.partial(fn, **params))
    else:
        with pytest.raises(WorkflowError) as e:
            _check_params("ok", functools.partial(fn, **params))
        assert str(e.value).startswith(message)
