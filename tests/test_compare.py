"""The comparison's logic on a real store whose runs are written through the store's API:
which run stands for a job, which params vary, which job is best, sorting, baselines."""

from __future__ import annotations

import csv
import io

import pytest

from wtb_conf.results import compare, table
from wtb_conf.store import StoreError, open_store


@pytest.fixture
def store(tmp_path):
    with open_store(str(tmp_path / "wtb.db"), tmp_path / "blobs") as s:
        yield s


def add_run(store, sweep, job, overrides, status="completed", scores=None, metrics=None,
            objective="f1", mode="max", error=None, cases=("one",)):
    """A run of `cases`, each scored `scores` (a numeric score shifted by +0.01 per case
    after the first, so that jobs differ by the same amount on every case)."""
    run = store.start_run(sweep, job, overrides, "wf", "{}", "d", "/tmp/job")
    per_case = {}
    for i, case in enumerate(cases):
        store.start_thread(run, f"{run}/{case}", case)
        store.finish_thread(f"{run}/{case}", "failed" if error else "completed", {}, None,
                            error=error, failed_node="clean" if error else None)
        per_case[case] = {"scores": {k: v if isinstance(v, bool) else v + 0.01 * i
                                     for k, v in (scores or {}).items()}, "errors": {}}
    store.finish_run(run, status, None, metrics or {}, error)
    summary = {"scores": {k: float(v) for k, v in (scores or {}).items()},  # as summarize
               "kinds": {}, "errors": {}, "pass_rate": None,
               "success_rate": 0.0 if error else 1.0, "cases": len(cases)}
    store.add_evaluation(run, "run", "k", {"objective": objective, "mode": mode}, per_case,
                         summary)
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


TIED = ("no best job on f1: job 0 is tied with job 1 (top two: +0 [+0, +0], p = 1 (paired-t, "
        "3 pairs)); the pairs show no difference at all")
BEST = [  # (scores per job, statuses, mode, objective, best job, note); 3 cases each
    ([0.5, 0.9, 0.7], None, "max", "f1", 1, None),
    ([0.5, 0.9, 0.7], None, "min", "f1", 0, None),
    ([0.9, 0.9, 0.7], None, "max", "f1", None, TIED),  # equal on every case: no best
    ([0.5, 0.9, 0.7], ["completed", "failed", "cached"], "max", "f1", 2, None),
    ([0.5, 0.9], None, "max", "acc", None, "no best job: no completed job has a value for acc"),
    ([0.5, 0.9], None, "max", None, None, None),
]


@pytest.mark.parametrize(("values", "statuses", "mode", "objective", "best", "note"), BEST)
def test_the_best_completed_job(store, values, statuses, mode, objective, best, note):
    sweep = store.create_sweep([])
    for i, v in enumerate(values):
        status = (statuses or ["completed"] * len(values))[i]
        add_run(store, sweep, i, [f"v={i}"], status, {"f1": v}, objective=objective, mode=mode,
                cases=("a", "b", "c"))
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


def test_failures_say_the_case_and_node_in_job_and_case_rows(store):
    sweep = store.create_sweep([])
    run = add_run(store, sweep, 0, ["a=1"], "failed", error="ValueError: bad row")
    line = f"job 0 case one failed in node clean: ValueError: bad row — `wtb show {run[:8]}`"
    rows, _ = compare.rows(store, [sweep], cases=True)
    assert [(r["case"], r["status"], r["failed_node"]) for r in rows] == [
        ("one", "failed", "clean")]
    assert table.failure_lines(rows) == [line]
    assert table.failure_lines(compare.rows(store, [sweep])[0]) == [line]


def test_a_job_that_failed_before_its_cases_keeps_its_row_per_case(store):
    sweep = store.create_sweep([])
    run = store.start_run(sweep, 0, ["a=1"], "wf", "{}", "d", "/tmp/job")
    store.finish_run(run, "failed", None, {}, "WorkflowError: workflow.nodes.x: bad")
    rows, _ = compare.rows(store, [sweep], cases=True)
    assert [(r["case"], r["status"]) for r in rows] == [(None, "failed")]
    assert table.failure_lines(rows) == [
        f"job 0 failed: WorkflowError: workflow.nodes.x: bad — `wtb show {run[:8]}`"]
    assert "failed" in table.table_lines(rows, "t")[2]


def test_a_dict_evaluator_as_objective_names_its_keys(store):
    sweep = store.create_sweep([])
    add_run(store, sweep, 0, ["a=1"], scores={"kept.f1": 1.0, "kept.recall": 0.5},
            objective="kept")
    assert compare.rows(store, [sweep])[1] == (
        "no best job: no completed job has a value for kept; its evaluator returns a dict: "
        "name one of kept.f1, kept.recall")


SORT = [
    ("f1", [2, 0, 1]),
    ("-limit", [2, 1, 0]),  # a param by its column label
    ("-f1", [1, 0, 2]),
    ("a", [0, 1, 2]),
    ("-job_num", [2, 1, 0]),
]


@pytest.mark.parametrize(("key", "order"), SORT)
def test_sort_rows(store, key, order):
    sweep = store.create_sweep([])
    for i, v in enumerate([0.5, 0.9, 0.1]):
        add_run(store, sweep, i, [f"a={i}", f"x.limit={i}"], scores={"f1": v})
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
    compare.add_baseline(rows, base, by_params=True)  # a sweep: the job with the same params
    assert rows[0]["delta"] == {"f1": 0.25, "n": 2, "success_rate": 0.0}
    assert rows[1]["delta"] == {} and rows[1]["baseline_run"] is None
    compare.add_baseline(rows, base[1:], by_params=False)  # a run: every row against it
    assert rows[1]["delta"]["f1"] == pytest.approx(-0.1)
    # per case: case against case, of the same job (a sweep) or of the run
    cases, _ = compare.rows(store, [new], cases=True)
    base_cases, _ = compare.rows(store, [old], cases=True)
    compare.add_baseline(cases, base_cases, by_params=True)
    assert [(r["case"], r["baseline_run"]) for r in cases] == [
        ("one", base[0]["run_id"]), ("one", None)]
    compare.add_baseline(cases, base_cases[1:], by_params=False)
    assert {r["baseline_run"] for r in cases} == {base[1]["run_id"]}


def test_csv_has_a_column_per_param_number_and_delta(store):
    sweep = store.create_sweep([])
    add_run(store, sweep, 0, ["a=0"], scores={"f1": 0.5})
    add_run(store, sweep, 1, ["a=1"], scores={"f1": 0.75})
    rows, _ = compare.rows(store, [sweep])
    compare.add_baseline(rows, rows[:1], by_params=False)
    grid = list(csv.DictReader(io.StringIO(table.to_csv(rows))))
    assert grid[0]["a"] == "0" and grid[0]["f1"] == "0.5" and grid[0]["delta.f1"] == ""
    assert grid[1]["delta.f1"] == "0.25"  # (the baseline's own row has no difference)
    assert grid[0]["success_rate"] == "1.0"  # values as stored, not rounded for a screen
    assert grid[0]["best"] == grid[1]["best"] == "False"  # one case each: too few pairs


def _row(job, params, status="completed", best=False, case=None, score_errors=None, **numbers):
    row = {"sweep_id": "s" * 32, "job_num": job, "run_id": f"{job:08d}" + "0" * 24,
           "params": params, "status": status, "duration_s": 0.1, "metrics": numbers,
           "scores": {}, "best": best, "objective": "m", "mode": "max",
           "score_errors": score_errors or {}, "error": None}
    if case is not None:
        row["case"] = case
    return row


@pytest.mark.parametrize(("rows", "line"), [
    ([_row(0, {"v": "a"}, best=True, m=0.5), _row(1, {"v": "b"}, m=0.2)],
     "best: job 0 (run 00000000) v=a: m = 0.5 (max)"),
    # nothing varies: no stray ' :'
    ([_row(0, {"v": "a"}, best=True, m=0.5)], "best: job 0 (run 00000000): m = 0.5 (max)"),
    # --cases: the value is the case's, and it is shown
    ([_row(0, {}, best=True, case="orders", m=0.7), _row(0, {}, case="returns", m=0.1)],
     "best: job 0 (run 00000000): m = 0.7 (max)"),
])
def test_the_best_line_names_the_params_that_vary_and_the_value(rows, line):
    assert table.best_line(next(r for r in rows if r["best"]), rows) == line


def test_a_table_wider_than_the_terminal_is_cut_into_blocks_led_by_job_and_run():
    rows = [_row(i, {"v": str(i)}, **{f"metric_{k:02d}": 0.5 for k in range(12)})
            for i in range(3)]
    whole = table.table_lines(rows, "t")
    assert len(whole) == 1 + 1 + 3 and max(map(len, whole)) > 80
    cut = table.table_lines(rows, "t", width=80)
    assert max(map(len, cut)) <= 80
    heads = [line for line in cut if line.startswith("job")]
    assert len(heads) >= 2 and all(h.split()[:2] == ["job", "run"] for h in heads)
    for k in range(12):  # every column is still there, once
        assert sum(f"metric_{k:02d}" in h for h in heads) == 1


def test_evaluator_errors_are_listed_even_where_failed_jobs_are_listed_elsewhere(capsys):
    rows = [_row(0, {}, score_errors={"judge": 5}, m=0.5)]
    table.print_rows(rows, "t", failures=False)
    out = capsys.readouterr().out
    assert "job 0: evaluator judge failed on 5 case(s) — `wtb show 00000000`" in out


def test_a_failed_jobs_values_are_partial_and_never_ranked(store):
    sweep = store.create_sweep([])
    add_run(store, sweep, 0, ["v=0"], scores={"f1": 0.5}, cases=("a", "b", "c"))
    add_run(store, sweep, 1, ["v=1"], "failed", scores={"f1": 0.9}, cases=("a", "b", "c"),
            error="ValueError: boom")
    rows, _ = compare.rows(store, [sweep])
    assert [r["partial"] for r in rows] == [False, True]
    assert rows[1]["stats"]["f1"]["mean"] == pytest.approx(0.91)  # over what was scored
    assert [r["best"] for r in rows] == [True, False]  # the one complete job
    assert table.cell(rows[1], "f1") == "~0.9"  # (the run's own mean, as scoring wrote it)
    assert table.legend(rows) == [
        "~: a failed job's value over the cases that completed (never ranked)"]


def test_cells_show_intervals_only_for_jobs_with_trials(store):
    sweep = store.create_sweep([])
    keys = tuple(f"{c}/{t}" for c in ("a", "b") for t in range(3))
    add_run(store, sweep, 0, ["v=0"], scores={"f1": 0.5, "ok": True}, cases=keys)
    add_run(store, sweep, 1, ["v=1"], scores={"f1": 0.5}, cases=("a", "b", "c"))
    rows, _ = compare.rows(store, [sweep])
    assert rows[0]["trials"] == 3 and rows[1]["trials"] == 1
    low, high = rows[0]["stats"]["f1"]["ci"]
    assert table.cell(rows[0], "f1") == f"0.5±{(high - low) / 2:.2g}"
    wilson = rows[0]["stats"]["ok"]["ci"]
    assert table.cell(rows[0], "ok") == f"1 [{wilson[0]:.2g}, {wilson[1]:.2g}]"
    assert table.cell(rows[1], "f1") == "0.5"  # cases run once: no interval
