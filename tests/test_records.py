"""The records the store hands out match their types (wtb_conf.store.record_types), and so do
the field lists of docs/store.md and the keys `wtb runs/show --json` print (docs/cli.md)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

from wtb_conf.store import Store, open_store
from wtb_conf.store import record_types as rt
from wtb_conf.store.record_types import RunStatus, SweepStatus, ThreadStatus

DOCS = Path(__file__).resolve().parents[1] / "docs"
RECORDS = {name: t for name, t in vars(rt).items()
           if isinstance(t, type) and hasattr(t, "__required_keys__")}
ENUMS = {name: t for name, t in vars(rt).items()
         if isinstance(t, type) and issubclass(t, rt.StrEnum) and t is not rt.StrEnum}
# what `wtb show --json` adds to a run's record (docs/cli.md), and to each of its cases
SHOWN_RUN = {"cases", "lineage", "evaluations"}
SHOWN_CASE = {"checkpoints", "executed"}


def keys(record: type) -> set[str]:
    return set(record.__required_keys__ | record.__optional_keys__)


def recorded(store: Store, tmp_path: Path) -> dict[str, str]:
    """One sweep with one run of one case, through every write a job makes."""
    sweep = store.create_sweep(["workflow=wf"], str(tmp_path))
    run = store.start_run(sweep, 0, ["workflow=wf"], "wf", "a: 1\n", "digest", str(tmp_path),
                          python="python", env_lock=["x==1"], identity={"job_key": "key"})
    thread = f"{run}/case"
    store.start_thread(run, thread, "case")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f.txt").write_text("x")
    commit = store.commit_dir(tmp_path / "out", message="case")
    store.link_checkpoint(run, thread, "", "cp1", 0, "loop", ["node"], commit,
                          path=["node"], keys=("base", "prefix"))
    store.finish_thread(thread, ThreadStatus.COMPLETED, {"n": 1}, commit)
    store.add_evaluation(run, rt.EvaluationSource.RUN, "ek", {"objective": None}, {}, {})
    store.finish_run(run, RunStatus.COMPLETED, commit, {"m": 1.0})
    assert store.finish_sweep(sweep) == SweepStatus.COMPLETED
    return {"sweep": sweep, "run": run, "thread": thread}


def test_every_record_of_a_real_run_has_exactly_its_types_keys(db_url, tmp_path):
    with open_store(db_url, tmp_path / "blobs") as store:
        ids = recorded(store, tmp_path)
        run, sweep = ids["run"], ids["sweep"]
        returned = {
            "runs": (rt.Run, store.runs(sweep) + store.runs()),
            "cached_run": (rt.Run, [store.cached_run("key"), store.cached_run("key", [sweep])]),
            "run": (rt.RunDetail, [store.run(run)]),
            "sweep": (rt.Sweep, [store.sweep(sweep)]),
            "threads": (rt.Thread, store.threads(run)),
            "checkpoints": (rt.RunCheckpoint, store.checkpoints(run) +
                            [store.checkpoint(run, "cp")]),
            "shareable": (rt.ShareableLink, store.shareable("base")),
            "events": (rt.Event, store.events(run)),
            "first_sweep_event": (rt.Event, [store.first_sweep_event(sweep, "sweep_started")]),
            "evaluations": (rt.Evaluation, store.evaluations(run) +
                            list(store.latest_evaluations([sweep]).values()) +
                            list(store.latest_evaluations([sweep], cases=False).values())),
            "compare_runs": (rt.CompareRun, store.compare_runs([sweep])),
            "compare_cases": (rt.CaseOutcome, store.compare_cases([sweep]) +
                              store.compare_cases(run_ids=[run])),
        }
        for method, (record, rows) in returned.items():
            assert rows, method
            for row in rows:
                assert set(row) == keys(record), (method, set(row) ^ keys(record))
        assert store.run(run)["status"] in set(RunStatus)
        assert store.threads(run)[0]["status"] in set(ThreadStatus)
        assert store.sweep(sweep)["status"] in set(SweepStatus)


def test_a_compare_run_is_part_of_a_run():
    assert keys(rt.CompareRun) < keys(rt.Run)


def test_new_run_has_the_parameters_of_start_run():
    """NewRun is what start_run records: `start_run(**vars(new_run))` must keep working."""
    params = list(inspect.signature(Store.start_run).parameters)[1:]
    assert [f.name for f in dataclasses.fields(rt.NewRun)] == params


def _table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after `heading`."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def documented_records(text: str) -> dict[str, set[str]]:
    """docs/store.md's records: name -> keys (a record named among them: its keys too), and
    its statuses: name -> values."""
    out: dict[str, set[str]] = {}
    for heading in ("\n## Records", "\nStatuses and sources"):
        for name, where, listed in _table(text, heading):
            name = name.strip("`")
            for method in re.findall(r"`(\w+)\(\)`", where):
                assert hasattr(Store, method), f"docs/store.md: {name}: no Store.{method}"
            out[name] = set()
            for token in re.findall(r"`(\w+)`", listed):
                out[name] |= out[token] if token in out else {token}
    return out


def test_the_field_lists_of_docs_store_md_are_the_records_types():
    documented = documented_records((DOCS / "store.md").read_text())
    assert set(documented) == set(RECORDS) | set(ENUMS)
    for name, record in RECORDS.items():
        assert documented[name] == keys(record), (name, documented[name] ^ keys(record))
    for name, enum in ENUMS.items():
        assert documented[name] == {m.value for m in enum}, name


def test_a_drift_between_docs_and_types_is_caught():
    """A key added to a record, or left out of its docs, fails the comparison above."""
    text = (DOCS / "store.md").read_text()
    assert documented_records(text.replace("`ray_node`", "`ray_node`, `rack`", 1))["Run"] \
        != keys(rt.Run)


def test_the_json_of_wtb_runs_and_show_is_the_records(tmp_path, capsys):
    db, blobs = f"sqlite:///{tmp_path / 'wtb.db'}", tmp_path / "blobs"
    with open_store(db, blobs) as store:
        run = recorded(store, tmp_path)["run"]

    from wtb_conf.cli import main  # in-process, as a user's `wtb` runs it

    def wtb(*args: str):
        capsys.readouterr()
        try:
            code = main(["--db", db, "--blobs", str(blobs), *args])
        except SystemExit as e:  # a CLI framework's way of returning
            code = e.code
        assert code in (0, None), capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    cli = (DOCS / "cli.md").read_text()
    documented_run = {k for row in _table(cli, "### wtb runs") for k in
                      re.findall(r"`(\w+)`", row[0])}
    documented_show = {k for row in _table(cli, "### wtb show") for k in
                       re.findall(r"`(\w+)`", row[0])}
    assert documented_run == keys(rt.Run)
    assert documented_show == keys(rt.RunDetail) - keys(rt.Run) | SHOWN_RUN

    [listed] = wtb("runs", "--json")
    assert set(listed) == keys(rt.Run)
    shown = wtb("show", run[:8], "--json")
    assert set(shown) == keys(rt.RunDetail) | SHOWN_RUN
    [case] = shown["cases"]
    assert set(case) == keys(rt.Thread) | SHOWN_CASE
    lineage_keys = {k for row in _table(cli, "and the\ncase's lineage") for k in
                    re.findall(r"`(\w+)`", row[0])}
    assert lineage_keys <= set(case)
    documented_link = re.search(r"`checkpoints`: a list of\s+`\{([^}]*)\}`", cli).group(1)
    [link] = case["checkpoints"]
    assert set(link) == {k.strip() for k in documented_link.split(",")}
    assert set(link) == keys(rt.CheckpointLink) - {"thread_id", "run_id"}
    [evaluation] = shown["evaluations"]
    assert set(evaluation) == keys(rt.Evaluation)
    assert all(set(e) == keys(rt.Event) for e in wtb("log", run, "--json"))


@pytest.mark.parametrize("status", list(RunStatus))
def test_a_run_status_is_its_string(status):
    """Members equal their strings: SQL, JSON and comparisons with str keep working."""
    assert status == status.value and json.dumps(status) == f'"{status.value}"'
    assert status.value in rt.DONE | {"running", "failed", "paused"}


def test_run_of_thread_names_the_run_a_case_thread_belongs_to(db_url, tmp_path):
    with open_store(db_url, tmp_path / "blobs") as store:
        ids = recorded(store, tmp_path)
        assert store.run_of_thread(ids["thread"]) == ids["run"]
        assert store.run_of_thread(f"{ids['run']}/no-such-case") is None


def test_first_sweep_event_is_the_sweeps_own_first_of_its_kind(db_url, tmp_path):
    with open_store(db_url, tmp_path / "blobs") as store:
        ids = recorded(store, tmp_path)
        sweep = ids["sweep"]
        assert store.first_sweep_event(sweep, "replay") is None
        store.log_event("replay", {"n": 1}, sweep_id=sweep)
        store.log_event("replay", {"n": 2}, sweep_id=sweep)
        store.log_event("replay", {"n": 3}, run_id=ids["run"], sweep_id=sweep)  # a run's
        store.log_event("replay", {"n": 4}, sweep_id=store.create_sweep([]))
        event = store.first_sweep_event(sweep, "replay")
        assert event is not None and (event["kind"], event["data"]) == ("replay", {"n": 1})
        # run_started carries the sweep's id too, but it is its run's event
        assert store.first_sweep_event(sweep, "run_started") is None
        assert store.first_sweep_event(sweep, "sweep_started")["data"]["argv"] == ["workflow=wf"]
