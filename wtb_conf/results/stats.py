"""The statistics of a comparison, from scipy.stats: what one job's values of a metric say
(`describe`), and whether two jobs differ on the same (case, trial) pairs (`paired`).

Values come as {key: value}, the key being a thread's (`CASE` or `CASE/TRIAL`,
wtb_conf.trials). A metric or score is pass/fail when every value is a bool, else a number.
docs/compare.md says what each figure means; why these methods:

- The interval of a mean is Student's t over all cases x trials: analytic, so it costs
  nothing on a 10,000-job sweep. It is conditional on the cases you have: cases that differ
  widely make it wider, never falsely narrow.
- A pass rate's interval is Wilson's, which stays inside [0, 1] and is right near 0 and 1
  where the normal approximation is not.
- Two jobs are paired on the (case, trial) pairs both have: trial 3 of a case meets the same
  seed in every variant, so the difference of a pair is the variant's effect plus less noise
  than two independent samples carry. Numbers: the paired t-test (scipy.stats.ttest_rel) and
  the t-interval of the mean difference; its p-value is analytic, so a Holm correction over
  a grid of thousands of tests can still reach significance (a permutation p-value cannot
  go below 1/(resamples + 1)). Pass/fail: McNemar's exact test (a binomial test on the pairs
  where exactly one job passed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from wtb_conf.trials import split_key

LEVEL = 0.95  # every interval
ALPHA = 0.05  # significance, after Holm's correction where several tests are made
POWER = 0.8  # for the estimate of the trials a difference needs


def is_check(values: Sequence[Any]) -> bool:
    return bool(values) and all(isinstance(v, bool) for v in values)


def numeric(values: Mapping[str, Any]) -> dict[str, float | bool]:
    """The numbers and bools among `values` (None and text are not scores)."""
    return {k: v for k, v in values.items() if isinstance(v, int | float)}


@functools.cache
def _wilson(passed: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(passed, n).proportion_ci(LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


@functools.cache
def _t_bounds(df: int) -> tuple[float, float]:
    """Student's t interval at LEVEL for `df` degrees of freedom, standardized: a mean's
    interval is mean + se * bounds (scipy's t.interval with loc and scale, without its
    per-call cost: a sweep of 200 jobs x 6 numbers asks for a handful of `df`s)."""
    from scipy.stats import t

    low, high = t.interval(LEVEL, df)
    return float(low), float(high)


def describe(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """{n, mean, se, ci, method} of a job's values (`method`: "t" or "wilson"), and for
    pass/fail with several trials per case pass@k and pass^k at k = the trials."""
    values = numeric(values)
    if not values:
        return None
    data = list(values.values())
    n = len(data)
    mean = sum(float(v) for v in data) / n
    out: dict[str, Any] = {"n": n, "mean": mean}
    if is_check(data):
        out.update(se=math.sqrt(mean * (1 - mean) / n), ci=list(_wilson(sum(data), n)),
                   method="wilson", **pass_at_k(values))
        return out
    if n < 2:
        return {**out, "se": None, "ci": None, "method": "t"}
    sd = math.sqrt(sum((float(v) - mean) ** 2 for v in data) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0:
        return {**out, "se": 0.0, "ci": [mean, mean], "method": "t"}
    low, high = _t_bounds(n - 1)
    return {**out, "se": se, "ci": [mean + se * low, mean + se * high], "method": "t"}


def pass_at_k(values: Mapping[str, bool]) -> dict[str, Any]:
    """pass@k (some of k trials passes) and pass^k (all k pass), per case by the unbiased
    estimators over its n trials (1 - C(n-c, k)/C(n, k) and C(c, k)/C(n, k), c passed), then
    averaged over cases; k is the fewest trials a case has. Empty when every case ran once."""
    per_case: dict[str, list[bool]] = {}
    for key, value in values.items():
        per_case.setdefault(split_key(key)[0], []).append(value)
    k = min(len(v) for v in per_case.values())
    if k < 2:
        return {}
    at, hat = [], []
    for trials in per_case.values():
        n, c = len(trials), sum(trials)
        at.append(1 - math.comb(n - c, k) / math.comb(n, k))
        hat.append(math.comb(c, k) / math.comb(n, k))
    return {"k": k, "pass_at_k": sum(at) / len(at), "pass_hat_k": sum(hat) / len(hat)}


def paired(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """A minus B on the keys both have: {n, diff, ci, p, test}; None without two pairs.
    A difference that is the same on every pair (deterministic workflows) has no noise to
    doubt: p is 0 (1 when it is 0) and the interval is that difference."""
    return paired_many([(a, b)])[0]


@functools.cache
def _mcnemar(only_a: int, discordant: int) -> float:
    from scipy.stats import binomtest

    return float(binomtest(only_a, discordant, 0.5).pvalue)


def paired_many(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                ) -> list[dict[str, Any] | None]:
    """`paired` of each (A, B), the t-tests of equally many pairs in one scipy call (a
    baseline against 200 jobs x 6 numbers is 1,200 tests)."""
    out: list[dict[str, Any] | None] = []
    batches: dict[int, list[tuple[int, list[float], list[float]]]] = {}
    for a, b in pairs:
        a, b = numeric(a), numeric(b)
        keys = [k for k in a if k in b]
        if len(keys) < 2:
            out.append(None)
            continue
        xs, ys = [float(a[k]) for k in keys], [float(b[k]) for k in keys]
        diffs = [x - y for x, y in zip(xs, ys, strict=True)]
        diff = sum(diffs) / len(diffs)
        checks = is_check([a[k] for k in keys]) and is_check([b[k] for k in keys])
        result = {"n": len(diffs), "diff": diff, "test": "mcnemar" if checks else "paired-t"}
        if all(d == diffs[0] for d in diffs):
            result.update(ci=[diff, diff], p=1.0 if diff == 0 else 0.0)
        else:
            if checks:
                only_a = sum(d > 0 for d in diffs)
                result["p"] = _mcnemar(only_a, only_a + sum(d < 0 for d in diffs))
            batches.setdefault(len(diffs), []).append((len(out), xs, ys))
        out.append(result)
    if batches:
        import numpy as np
        from scipy.stats import ttest_rel

        for batch in batches.values():
            t = ttest_rel(np.array([x for _, x, _ in batch]), np.array([y for _, _, y in batch]),
                          axis=-1)
            ci = t.confidence_interval(LEVEL)
            for j, (i, _, _) in enumerate(batch):
                result = out[i]
                assert result is not None
                result["ci"] = [float(ci.low[j]), float(ci.high[j])]
                result.setdefault("p", float(t.pvalue[j]))
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (scipy has none): the i-th smallest p times (m - i), kept
    monotone and at most 1. A test is significant when its adjusted p is below ALPHA."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def pairs_needed(a: Mapping[str, Any], b: Mapping[str, Any]) -> int | None:
    """An estimate of how many (case, trial) pairs a paired test needs to find the observed
    mean difference at ALPHA with POWER: ((z_(1-a/2) + z_power) * sd / diff)^2, the normal
    approximation. None when the pairs show no difference (no number of trials would)."""
    a, b = numeric(a), numeric(b)
    diffs = [float(a[k]) - float(b[k]) for k in a if k in b]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    if mean == 0:
        return None
    from scipy.stats import norm

    z = norm.ppf(1 - ALPHA / 2) + norm.ppf(POWER)
    return max(2, math.ceil((z * sd / mean) ** 2))
