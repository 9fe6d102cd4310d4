"""Which job is best, and only when the numbers say so (docs/compare.md, "Which job is best").

The top job by its mean objective is best when a paired test (wtb_conf.results.stats) finds
it ahead of the runner-up; otherwise it is tied with every job it cannot be told apart from
(Holm-corrected tests against it), and the note says so, with an estimate of the trials that
would separate the top two. Partial jobs (failed, their values over the cases that completed)
are never ranked. Rows are compare.rows's; this reads their `stats` and `_values`.
"""

from __future__ import annotations

import math
from typing import Any

from wtb_conf.results import stats
from wtb_conf.store.lifecycle import DONE
from wtb_conf.trials import split_key


def _pairs_text(test: dict[str, Any]) -> str:
    lo, hi = test["ci"]
    return (f"{test['diff']:+.3g} [{lo:+.3g}, {hi:+.3g}], p = {test['p']:.2g} "
            f"({test['test']}, {test['n']} pairs)")


def more_trials(test_pairs: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> int | None:
    """How many more trials per case the pairs_needed estimate asks for (None: no number)."""
    needed = stats.pairs_needed(a, b)
    if needed is None:
        return None
    keys = [k for k in a if k in b]
    cases = len({split_key(k)[0] for k in keys}) or 1
    return max(1, math.ceil(needed / cases) - math.ceil(test_pairs["n"] / cases))


def _job(row: dict[str, Any]) -> str:
    return f"job {row['job_num']}"


def judge(rows: list[dict[str, Any]]) -> str | None:
    """Mark `best` (and `tied`) on the rows; the note when no job is best although an
    objective is set. The top row gets `vs_next`: its paired test against the runner-up."""
    for r in rows:
        r["best"], r["tied"] = False, False
    objectives = {(r["objective"], r["mode"]) for r in rows if r["objective"]}
    if not objectives:
        return None
    if len(objectives) > 1:
        return ("no best job: the rows have different objectives "
                f"({', '.join(sorted(f'{o} ({m})' for o, m in objectives))})")
    (objective, mode), = objectives
    sign = 1 if mode == "max" else -1
    ranked = [(i, r) for i, r in enumerate(rows)
              if r["status"] in DONE and (r["stats"].get(objective) or {}).get("n")]
    if not ranked:
        keys = sorted({k for r in rows for k in r["scores"] if k.startswith(objective + ".")})
        return (f"no best job: no completed job has a value for {objective}"
                + (f"; its evaluator returns a dict: name one of {', '.join(keys)}"
                   if keys else ""))
    # ties of the means go to the first job, so the same store always ranks the same way
    ranked.sort(key=lambda ir: (-sign * ir[1]["stats"][objective]["mean"], ir[0]))
    top = ranked[0][1]
    if len(ranked) == 1:
        top["best"] = True
        return None
    second = ranked[1][1]
    mine = top["_values"].get(objective, {})
    test = stats.paired(mine, second["_values"].get(objective, {}))
    if test is not None:
        more = None if test["p"] < stats.ALPHA else more_trials(
            test, mine, second["_values"].get(objective, {}))
        top["vs_next"] = {"run_id": second["run_id"], **test, "more_trials": more}
    if test is not None and test["p"] < stats.ALPHA and sign * test["diff"] > 0:
        top["best"] = True
        return None
    tied = _tied(objective, top, [r for _, r in ranked[1:]])
    for r in [top, *tied]:
        r["tied"] = True
    if test is None:
        return (f"no best job on {objective}: {_job(top)} and {_job(second)} share fewer than 2 "
                "(case, trial) pairs, too few to tell them apart; run more trials (trials=N)")
    more = top["vs_next"]["more_trials"]
    same = test["ci"] == [0.0, 0.0]
    estimate = ("; the pairs show no difference at all" if more is None and same else
                "; their differences average 0: more trials would not tell them apart"
                if more is None else
                f"; about {more} more trial(s) per case would tell the top two apart at that "
                "difference (an estimate: docs/compare.md)")
    return (f"no best job on {objective}: {_job(top)} is tied with "
            f"{', '.join(_job(r) for r in tied)} (top two: {_pairs_text(test)}){estimate}")


def _tied(objective: str, top: dict[str, Any], others: list[dict[str, Any]]
          ) -> list[dict[str, Any]]:
    """The jobs a Holm-corrected paired test cannot tell from `top` (or has too few pairs)."""
    mine = top["_values"].get(objective, {})
    tests = stats.paired_many([(mine, r["_values"].get(objective, {})) for r in others])
    adjusted = iter(stats.holm([t["p"] for t in tests if t is not None]))
    return [r for r, t in zip(others, tests, strict=True)
            if t is None or next(adjusted) >= stats.ALPHA]


def best_text(best: dict[str, Any]) -> str:
    """What stands behind a best job: its lead over the runner-up, when it was tested."""
    test = best.get("vs_next")
    return "" if test is None else f", ahead of the next by {_pairs_text(test)}"
