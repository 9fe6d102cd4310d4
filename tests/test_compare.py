"""The comparison's logic on a real store whose runs are written through the store's API:
which run stands for a job, which params vary, which job is best, sorting, baselines."""

from __future__ import annotations

import csv
import io

import pytest

from wtb_conf import compare
from wtb_conf.store import StoreError, open_store


@pytest.fixture
def store(tmp_path):
    with open_store(str(tmp_path / "wtb.db"), tmp_path / "blobs") as s:
        yield s


def add_run(store, sweep, job, overrides, status="completed", scores=None, metrics=None,
            objective="f1", mode="max", error=None):
    run = store.start_run(sweep, job, overrides, "wf", "{}", "d", "/tmp/job")
    store.start_thread(run, f"{run}/one", "one")
    store.finish_thread(f"{run}/one", "failed" if error else "completed", {}, None,
                        error=error, failed_node="clean" if error else None)
    store.finish_run(run, status, None, metrics or {}, error)
    summary = {"scores": scores or {}, "kinds": {}, "errors": {}, "pass_rate": None,
               "success_rate": 0.0 if error else 1.0, "cases": 1}
    store.add_evaluation(run, "run", "k", {"objective": objective, "mode": mode},
                         {"one": {"scores": scores or {}, "errors": {}}}, summary)
    return run


PARAMS = [
    (["variant=a", "+experiment=demo", "x.y=0.1"],
     {"variant": "a", "experiment": "demo", "x.y": "0.1"}),
    (["~workflow.metrics"], {}),
    ([], {}),
    (["hydra/launcher=basic", "++a.b=[1,2]"], {"hydra/launcher": "basic", "a.b": "[1,2]"}),
]


@pytest.mark.parametrize(("overrides", "params"), PARAMS)
def test_params_of_overrides(overrides, params):
    assert compare.params_of(overrides) == params


SHORT = [
    (["workflow.routes.validate.router.max_invalid", "variant"],
     {"workflow.routes.validate.router.max_invalid": "max_invalid", "variant": "variant"}),
    (["a.limit", "b.limit"], {"a.limit": "a.limit", "b.limit": "b.limit"}),
    (["x.a.limit", "y.b.limit", "z"], {"x.a.limit": "a.limit", "y.b.limit": "b.limit",
                                       "z": "z"}),
]


@pytest.mark.parametrize(("keys", "labels"), SHORT)
def test_short_names_are_unique_suffixes(keys, labels):
    assert compare.short_names(keys) == labels


BEST = [  # (scores per job, statuses, mode, objective, best job, note)
    ([0.5, 0.9, 0.7], None, "max", "f1", 1, None),
    ([0.5, 0.9, 0.7], None, "min", "f1", 0, None),
    ([0.9, 0.9, 0.7], None, "max", "f1", 0, None),  # a tie goes to the first job
    ([0.5, 0.9, 0.7], ["completed", "failed", "cached"], "max", "f1", 2, None),
    ([0.5, 0.9], None, "max", "acc", None, "no best job: no completed job has a value for acc"),
    ([0.5, 0.9], None, "max", None, None, None),
]


@pytest.mark.parametrize(("values", "statuses", "mode", "objective", "best", "note"), BEST)
def test_the_best_completed_job(store, values, statuses, mode, objective, best, note):
    sweep = store.create_sweep([])
    for i, v in enumerate(values):
        status = (statuses or ["completed"] * len(values))[i]
        add_run(store, sweep, i, [f"v={i}"], status, {"f1": v}, objective=objective, mode=mode)
    rows, why = compare.rows(store, [sweep])
    assert [r["job_num"] for r in rows if r["best"]] == ([] if best is None else [best])
    assert why == note


def test_different_objectives_name_no_best(store):
    sweep = store.create_sweep([])
    add_run(store, sweep, 0, ["v=0"], scores={"f1": 1}, objective="f1")
    add_run(store, sweep, 1, ["v=1"], scores={"f1": 1}, objective="f1", mode="min")
    rows, note = compare.rows(store, [sweep])
    assert not any(r["best"] for r in rows)
    assert note == "no best job: the rows have different objectives (f1 (max), f1 (min))"


def test_a_retried_job_counts_once_and_varying_params_leave_fixed_ones_out(store):
    sweep = store.create_sweep([])
    add_run(store, sweep, 0, ["a=1", "b=x", "+experiment=e"], "failed", error="RuntimeError: died")
    retry = add_run(store, sweep, 0, ["a=1", "b=x", "+experiment=e"], scores={"f1": 0.2})
    add_run(store, sweep, 1, ["a=2", "b=x", "+experiment=e"], scores={"f1": 0.4})
    rows, _ = compare.rows(store, [sweep])
    assert [r["run_id"] for r in rows][0] == retry and len(rows) == 2
    assert compare.varying_params(rows) == ["a"]
    assert compare.numeric_columns(rows) == ["f1", "success_rate"]


def test_cases_rows_carry_the_failed_node(store):
    sweep = store.create_sweep([])
    add_run(store, sweep, 0, ["a=1"], "failed", error="ValueError: bad row")
    rows, _ = compare.rows(store, [sweep], cases=True)
    assert [(r["case"], r["status"], r["failed_node"]) for r in rows] == [
        ("one", "failed", "clean")]
    assert compare.failure_lines(rows) == [
        f"job 0 case one failed in node clean: ValueError: bad row — `wtb show "
        f"{rows[0]['run_id'][:8]}`"]


SORT = [
    ("f1", [2, 0, 1]),
    ("-f1", [1, 0, 2]),
    ("a", [0, 1, 2]),
    ("-job_num", [2, 1, 0]),
]


@pytest.mark.parametrize(("key", "order"), SORT)
def test_sort_rows(store, key, order):
    sweep = store.create_sweep([])
    for i, v in enumerate([0.5, 0.9, 0.1]):
        add_run(store, sweep, i, [f"a={i}"], scores={"f1": v})
    rows, _ = compare.rows(store, [sweep])
    assert [r["job_num"] for r in compare.sort_rows(rows, key)] == order


def test_sort_by_an_unknown_column_names_the_columns(store):
    sweep = store.create_sweep([])
    add_run(store, sweep, 0, ["a=0"], scores={"f1": 0.5})
    add_run(store, sweep, 1, ["a=1"], scores={"f1": 0.5})
    with pytest.raises(StoreError, match="--sort acc: no row has a 'acc'; sort by one of "
                                         "job_num, status, duration_s, a, f1, success_rate"):
        compare.sort_rows(compare.rows(store, [sweep])[0], "acc")


def test_baseline_run_and_sweep(store):
    old = store.create_sweep([])
    add_run(store, old, 0, ["a=0"], scores={"f1": 0.5}, metrics={"n": 10})
    add_run(store, old, 1, ["a=1"], scores={"f1": 0.6}, metrics={"n": 10})
    new = store.create_sweep([])
    add_run(store, new, 0, ["a=0"], scores={"f1": 0.75}, metrics={"n": 12})
    add_run(store, new, 1, ["a=2"], scores={"f1": 0.5}, metrics={"n": 12})
    rows, _ = compare.rows(store, [new])
    base, _ = compare.rows(store, [old])
    compare.add_baseline(rows, base)  # a sweep: the job with the same params
    assert rows[0]["delta"] == {"f1": 0.25, "n": 2, "success_rate": 0.0}
    assert rows[1]["delta"] == {} and rows[1]["baseline_run"] is None
    compare.add_baseline(rows, base[1:])  # a run: every row against it
    assert rows[1]["delta"]["f1"] == pytest.approx(-0.1)


def test_csv_has_a_column_per_param_number_and_delta(store):
    sweep = store.create_sweep([])
    add_run(store, sweep, 0, ["a=0"], scores={"f1": 0.5})
    rows, _ = compare.rows(store, [sweep])
    compare.add_baseline(rows, rows[:1])
    table = list(csv.DictReader(io.StringIO(compare.to_csv(rows))))
    assert table[0]["a"] == "0" and table[0]["f1"] == "0.5" and table[0]["delta.f1"] == "0.0"
    assert table[0]["best"] == "True"
