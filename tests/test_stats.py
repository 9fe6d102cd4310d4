"""The statistics of a comparison, each checked against an independent computation (scipy
called directly, or the definition enumerated), and the judgement and gates built on them."""

from __future__ import annotations

import itertools
import math

import pytest
from scipy import stats as sp

from wtb_conf.config.gates import Gate, GateError, parse
from wtb_conf.results import gates, judge, stats
from wtb_conf.trials import case_key, split_key, trial_of


def keyed(values, trials=1):
    """{CASE/TRIAL: value} for values laid out case by case."""
    return {f"c{i // trials}/{i % trials}" if trials > 1 else f"c{i}": v
            for i, v in enumerate(values)}


NUMBERS = [
    [0.1, 0.4, 0.35, 0.8, 0.62],
    [3, 5, 4, 4, 6, 2, 5],
    [1.0, 1.0],
]


@pytest.mark.parametrize("values", NUMBERS)
def test_a_mean_has_the_t_interval_scipy_gives(values):
    got = stats.describe(keyed(values))
    mean = sum(values) / len(values)
    assert got["n"] == len(values) and got["mean"] == pytest.approx(mean)
    assert got["method"] == "t"
    se = sp.sem(values)
    if se == 0:
        assert got["ci"] == [mean, mean] and got["se"] == 0
        return
    low, high = sp.t.interval(0.95, len(values) - 1, loc=mean, scale=se)
    assert got["se"] == pytest.approx(se)
    assert got["ci"] == pytest.approx([low, high])


def test_one_value_has_no_interval_and_no_values_no_description():
    assert stats.describe({"c0": 0.5}) == {"n": 1, "mean": 0.5, "se": None, "ci": None,
                                           "method": "t"}
    assert stats.describe({}) is None
    assert stats.describe({"c0": None, "c1": "text"}) is None


CHECKS = [([True] * 7 + [False] * 3, 1), ([True] * 20, 1), ([False, True] * 6, 4)]


@pytest.mark.parametrize(("values", "trials"), CHECKS)
def test_a_pass_rate_has_wilsons_interval(values, trials):
    got = stats.describe(keyed(values, trials))
    ci = sp.binomtest(sum(values), len(values)).proportion_ci(0.95, method="wilson")
    assert got["method"] == "wilson" and got["mean"] == pytest.approx(sum(values) / len(values))
    assert got["ci"] == pytest.approx([ci.low, ci.high])
    assert ("pass_at_k" in got) == (trials > 1)


def _by_enumeration(trials: list[bool], k: int) -> tuple[float, float]:
    """pass@k and pass^k of one case, by their definition: over every k-subset of its trials,
    the share with some pass / with all passing."""
    subsets = list(itertools.combinations(trials, k))
    return (sum(any(s) for s in subsets) / len(subsets),
            sum(all(s) for s in subsets) / len(subsets))


@pytest.mark.parametrize("cases", [
    [[True, False, False, True], [False, False, False, False], [True, True, True, False]],
    [[True, True, False], [False, True, True]],
])
def test_pass_at_k_and_pass_hat_k_match_their_definition(cases):
    values = {f"c{c}/{t}": v for c, trials in enumerate(cases) for t, v in enumerate(trials)}
    got = stats.pass_at_k(values)
    k = min(len(t) for t in cases)
    expected = [_by_enumeration(t, k) for t in cases]
    assert got["k"] == k
    assert got["pass_at_k"] == pytest.approx(sum(e[0] for e in expected) / len(cases))
    assert got["pass_hat_k"] == pytest.approx(sum(e[1] for e in expected) / len(cases))


def test_a_numeric_difference_is_scipys_paired_t_test():
    a = keyed([0.61, 0.72, 0.55, 0.80, 0.66, 0.70], trials=3)
    b = keyed([0.58, 0.70, 0.57, 0.71, 0.60, 0.69], trials=3)
    got = stats.paired(a, b)
    ref = sp.ttest_rel(list(a.values()), list(b.values()))
    ci = ref.confidence_interval(0.95)
    assert got["test"] == "paired-t" and got["n"] == 6
    assert got["p"] == pytest.approx(ref.pvalue)
    assert got["ci"] == pytest.approx([ci.low, ci.high])


def test_pass_fail_differences_are_mcnemars_exact_test():
    a = keyed([True, True, False, True, True, True, False, True])
    b = keyed([False, True, False, False, True, False, True, False])
    got = stats.paired(a, b)
    # discordant pairs: 4 where only A passed, 1 where only B did
    assert got["test"] == "mcnemar"
    assert got["p"] == pytest.approx(sp.binomtest(4, 5, 0.5).pvalue)
    assert got["diff"] == pytest.approx(3 / 8)


def test_pairs_are_the_keys_both_have_and_two_are_needed():
    assert stats.paired({"a": 1.0}, {"a": 0.0}) is None
    assert stats.paired({"a": 1.0, "b": 2.0}, {"b": 0.0, "c": 1.0}) is None
    got = stats.paired({"a": 1.0, "b": 2.0, "x": 9.0}, {"a": 0.5, "b": 1.5})
    assert got["n"] == 2 and got["diff"] == pytest.approx(0.5)
    assert got["p"] == 0.0 and got["ci"] == [0.5, 0.5]  # the same on every pair: no noise
    assert stats.paired({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})["p"] == 1.0


def test_holm_adjusts_step_down():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_pairs_needed_is_the_normal_approximation():
    a = keyed([0.5, 0.7, 0.6, 0.4, 0.65, 0.55])
    b = keyed([0.45, 0.7, 0.5, 0.45, 0.6, 0.5])
    diffs = [x - y for x, y in zip(a.values(), b.values(), strict=True)]
    mean, sd = sum(diffs) / 6, sp.tstd(diffs)
    z = sp.norm.ppf(0.975) + sp.norm.ppf(0.8)
    assert stats.pairs_needed(a, b) == math.ceil((z * sd / mean) ** 2)
    assert stats.pairs_needed(a, a) is None


def job(num, values, status="completed", objective="f1", mode="max"):
    described = stats.describe(values)
    return {"run_id": f"{num:032x}", "job_num": num, "status": status, "objective": objective,
            "mode": mode, "scores": {}, "_values": {"f1": values},
            "stats": {"f1": described} if described else {}, "params": {}}


def test_the_top_job_is_best_only_when_it_beats_the_runner_up():
    clear = [job(0, keyed([0.5, 0.6, 0.55, 0.52])), job(1, keyed([0.9, 0.95, 0.93, 0.91]))]
    assert judge.judge(clear) is None
    assert [r["best"] for r in clear] == [False, True]
    assert clear[1]["vs_next"]["p"] < 0.05

    close = [job(0, keyed([0.5, 0.9, 0.55, 0.8])), job(1, keyed([0.52, 0.85, 0.6, 0.82])),
             job(2, keyed([0.1, 0.2, 0.15, 0.12]))]
    note = judge.judge(close)
    assert not any(r["best"] for r in close)
    assert [r["tied"] for r in close] == [True, True, False]  # job 2 is clearly behind
    assert note.startswith("no best job on f1: job 1 is tied with job 0 (top two: ")
    assert "more trial(s) per case" in note


def test_a_failed_job_is_never_ranked_and_min_mode_ranks_low_first():
    rows = [job(0, keyed([0.9, 0.95, 0.93]), status="failed"),
            job(1, keyed([0.5, 0.52, 0.51]), mode="min"),
            job(2, keyed([0.1, 0.12, 0.11]), mode="min")]
    rows[0]["mode"] = "min"
    assert judge.judge(rows) is None
    assert [r["best"] for r in rows] == [False, False, True]


def test_one_pair_cannot_tell_two_jobs_apart():
    rows = [job(0, {"one": 0.5}), job(1, {"one": 0.9})]
    note = judge.judge(rows)
    assert not any(r["best"] for r in rows)
    assert note == ("no best job on f1: job 1 and job 0 share fewer than 2 (case, trial) "
                    "pairs, too few to tell them apart; run more trials (trials=N)")


GATES = [
    ("kept.f1 < baseline - 0.02", Gate("kept.f1 < baseline - 0.02", "kept.f1", "<", True, -0.02)),
    ("latency_s>=2.5", Gate("latency_s>=2.5", "latency_s", ">=", False, 2.5)),
    ("f1 <= baseline", Gate("f1 <= baseline", "f1", "<=", True, 0.0)),
    ("f1 > baseline + 1e-3", Gate("f1 > baseline + 1e-3", "f1", ">", True, 0.001)),
]


@pytest.mark.parametrize(("text", "gate"), GATES)
def test_gates_are_read(text, gate):
    assert parse(text) == gate


BAD_GATES = [
    ("kept.f1", "--fail-if 'kept.f1': write NAME OP VALUE"),
    ("f1 < lots", "--fail-if 'f1 < lots': 'lots' is not a number; write NAME OP VALUE"),
    ("f1 < baseline * 2", "--fail-if 'f1 < baseline * 2': 'baseline * 2' is not a number"),
    (3, "--fail-if 3: write NAME OP VALUE"),
]


@pytest.mark.parametrize(("text", "message"), BAD_GATES)
def test_a_gate_that_cannot_be_read_says_how_to_write_one(text, message):
    with pytest.raises(GateError) as e:
        parse(text)
    assert str(e.value).startswith(message)


def test_a_gate_fails_on_the_interval_unless_told_to_use_the_mean():
    row = job(1, keyed([0.50, 0.52, 0.48, 0.51]))
    row["baseline_run"] = "b"
    row["vs_baseline"] = {"f1": {"diff": -0.03, "ci": [-0.06, 0.0], "p": 0.06}}
    gate = parse("f1 < baseline - 0.02")
    [held] = gates.evaluate([gate], [row])
    assert not held["failed"] and held["judged_on"] == "interval"
    [failed] = gates.evaluate([gate], [row], on="mean")
    assert failed["failed"]
    row["vs_baseline"]["f1"]["ci"] = [-0.05, -0.025]
    [failed] = gates.evaluate([gate], [row])
    assert failed["failed"]
    assert gates.lines([failed]) == [
        f'gate "f1 < baseline - 0.02" failed on job 1 (run {row["run_id"][:8]}): the '
        "difference to the baseline is -0.03 [-0.05, -0.025], p = 0.06, judged on the interval"]


def test_gates_on_what_the_jobs_do_not_have_are_refused():
    with pytest.raises(GateError, match="'f2' is not a metric, score or rate of these jobs; "
                                        "valid: f1, success_rate"):
        gates.check([parse("f2 < 0.5")], ["f1", "success_rate"], has_baseline=False)
    with pytest.raises(GateError, match="compares with a baseline, and none is named"):
        gates.check([parse("f1 < baseline")], ["f1"], has_baseline=False)


@pytest.mark.parametrize(("key", "split"), [
    ("orders", ("orders", 0)), ("orders/3", ("orders", 3)), ("orders/12", ("orders", 12)),
    ("<b>/x", ("<b>/x", 0)),  # not a key: a name of its own
    ("/3", ("/3", 0)),
])
def test_a_threads_key_splits_into_its_case_and_trial(key, split):
    assert split_key(key) == split


def test_trial_keys_and_seeds():
    assert case_key("orders", 0, 1) == "orders" and case_key("orders", 2, 5) == "orders/2"
    first = trial_of({"q": "a"}, "", 0)
    assert first == trial_of({"q": "a"}, "", 0) and first.index == 0  # the same every time
    seeds = {trial_of({"q": "a"}, "", t).seed for t in range(10)}
    assert len(seeds) == 10 and all(0 <= s < 2 ** 63 for s in seeds)
    assert trial_of({"q": "b"}, "", 0).seed != first.seed  # another input, other draws
    assert trial_of({"q": "a"}, "commit", 0).seed != first.seed  # other input files too
