"""Gates for CI: `wtb compare --fail-if "kept.f1 < baseline - 0.02"` (or `compare.gates:`)
exits non-zero when a job's value regresses past the gate (docs/compare.md, "A gate for CI").

A gate is `NAME OP VALUE`: NAME a metric, score or rate, OP one of < <= > >=, VALUE a number
or `baseline`, `baseline - X`, `baseline + X`. It fails on a job when the job's value is on
the gate's side of VALUE, and by default only when the whole 95% interval is (for `baseline`
gates, the interval of the paired difference to the baseline; for numbers, of the job's
mean): a regression that noise could explain does not fail a build. `--gate-on mean` judges
the means alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wtb_conf.config.gates import OPS, Gate, GateError, parse
from wtb_conf.results import compare
from wtb_conf.store import Store, StoreError


def check(gates: list[Gate], names: list[str], has_baseline: bool, where: str = "--fail-if",
          ) -> None:
    """Refuse a gate on a name the jobs do not have, or on a baseline there is not."""
    for gate in gates:
        if gate.name not in names:
            raise GateError(f"{where} {gate.text!r}: {gate.name!r} is not a metric, score or "
                            f"rate of these jobs; valid: {', '.join(names) or 'none'}")
        if gate.baseline and not has_baseline:
            raise GateError(f"{where} {gate.text!r} compares with a baseline, and none is named;"
                            " name one: --baseline RUN|JOB|KEY=VALUE (or compare.baseline)")


def evaluate(gates: list[Gate], rows: list[dict[str, Any]], on: str = "interval",
             ) -> list[dict[str, Any]]:
    """One result per gate and job row (the baseline's own row and rows without the value
    are not judged): {gate, run_id, job_num, failed, value, interval, p, judged_on}. Each
    row's results are also in its `gates`."""
    out = []
    for row in rows:
        row["gates"] = []
        for gate in gates:
            result = _judge(gate, row, on)
            if result is not None:
                result.update(gate=gate.text, run_id=row["run_id"], job_num=row["job_num"])
                row["gates"].append(result)
                out.append(result)
    return out


def _judge(gate: Gate, row: dict[str, Any], on: str) -> dict[str, Any] | None:
    op = OPS[gate.op]
    if gate.baseline:
        if row.get("baseline_run") in (None, row["run_id"]):
            return None
        test = (row.get("vs_baseline") or {}).get(gate.name)
        value = test["diff"] if test else (row.get("delta") or {}).get(gate.name)
        interval, p = (test["ci"], test.get("p_holm", test["p"])) if test else (None, None)
    else:
        described = (row.get("stats") or {}).get(gate.name)
        if not described:
            return None
        value, interval, p = described["mean"], described.get("ci"), None
    if value is None:
        return None
    if on == "interval" and interval:
        # the nearer end of the interval must be past the gate too
        edge = interval[1] if gate.op in ("<", "<=") else interval[0]
        failed, judged = op(edge, gate.margin), "interval"
    else:
        failed, judged = op(value, gate.margin), "mean"
    return {"failed": bool(failed), "value": value, "interval": interval, "p": p,
            "judged_on": judged}


def lines(results: list[dict[str, Any]]) -> list[str]:
    """`gate "..." failed on job 2 (run ab12cd34): -0.05 [-0.07, -0.03] vs the baseline`,
    and one line per gate that held."""
    out, held = [], {}
    for r in results:
        if not r["failed"]:
            held[r["gate"]] = held.get(r["gate"], 0) + 1
            continue
        spread = (f" [{r['interval'][0]:+.3g}, {r['interval'][1]:+.3g}]"
                  if r["interval"] else "")
        p = f", p = {r['p']:.2g}" if r["p"] is not None else ""
        what = "the difference to the baseline" if "baseline" in r["gate"] else "the value"
        out.append(f"gate \"{r['gate']}\" failed on job {r['job_num']} (run {r['run_id'][:8]}): "
                   f"{what} is {r['value']:+.4g}{spread}{p}, judged on the {r['judged_on']}")
    out += [f"gate \"{g}\" held on {n} job(s)" for g, n in held.items()]
    return out


@dataclass
class Judged:
    """A comparison with its baseline applied and its gates judged: what `wtb compare` and
    the end of a sweep show."""

    rows: list[dict[str, Any]]  # job rows, or job x case rows with `cases`
    note: str | None
    jobs: list[dict[str, Any]]  # the job rows (the same list as `rows` without `cases`)
    gates: list[dict[str, Any]]  # gates.evaluate's results
    baseline: str | None


def _common(rows: list[dict[str, Any]], key: str) -> Any:
    """A compare setting every row was scored under (the experiment's), else None."""
    values = {json.dumps(r[key]) for r in rows if r.get(key) not in (None, [])}
    return json.loads(values.pop()) if len(values) == 1 else None


def judged(store: Store, sweeps: list[str], cases: bool = False, baseline: str | None = None,
           fail_if: Sequence[str] = (), on: str = "interval") -> Judged:
    """The comparison of these sweeps against `baseline` (default: their compare.baseline),
    with the gates `fail_if` (default: their compare.gates). A `baseline` or `fail_if` given
    that cannot be used raises GateError or StoreError naming it, before anything is
    printed. The configured ones never do: one that names no job or metric of these sweeps
    (a sweep of some of the experiment's jobs) is a note, and the jobs are compared without
    it (and without the configured gates that need a baseline)."""
    jobs, case_rows, note = compare.rows_and_cases(store, sweeps, cases)
    notes = [note] if note else []
    if fail_if:
        parsed = [parse(text) for text in fail_if]
    else:
        parsed = _configured_gates(jobs, notes)
    base: list[dict[str, Any]] = []
    by_params = False
    if baseline is not None:
        base, by_params = compare.baseline_rows(store, jobs, baseline)
    elif (ref := _common(jobs, "baseline")) is not None:
        try:
            base, by_params = compare.baseline_rows(store, jobs, str(ref))
            baseline = str(ref)
        except StoreError as e:
            notes.append(f"compare.{e}: compared without a baseline (--baseline names one)")
    if baseline is None and not fail_if:
        if skipped := [g.text for g in parsed if g.baseline]:
            parsed = [g for g in parsed if not g.baseline]
            notes.append(f"compare.gates {', '.join(skipped)}: left out, with no baseline")
    check(parsed, compare.numeric_columns(jobs), baseline is not None)
    if baseline is not None:
        compare.add_baseline(jobs, base, by_params)
        if cases:  # the baseline's case rows, matched case to case
            ids = {b["run_id"] for b in base}
            theirs = sorted({b["sweep_id"] for b in base})
            pool = case_rows if set(theirs) <= set(sweeps) else compare.rows(
                store, theirs, cases=True)[0]
            compare.add_baseline(case_rows, [r for r in pool if (r["sweep_id"] in theirs
                                                                 if by_params else
                                                                 r["run_id"] in ids)],
                                 by_params)
    return Judged(case_rows if cases else jobs, "\n".join(notes) or None, jobs,
                  evaluate(parsed, jobs, on), baseline)


def _configured_gates(jobs: list[dict[str, Any]], notes: list[str]) -> list[Gate]:
    """The sweeps' compare.gates (checked before they ran; a stored run may predate that):
    one that does not read, or names what these jobs lack, is a note and left out."""
    out = []
    for i, text in enumerate(_common(jobs, "gate_texts") or []):
        try:
            gate = parse(text, f"compare.gates[{i}]")
            check([gate], compare.numeric_columns(jobs), True, f"compare.gates[{i}]")
            out.append(gate)
        except GateError as e:
            notes.append(f"{e}: left out")
    return out
