"""`wtb compare`, `evaluate` and `report`: how the runs did."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wtb_conf.cli.common import print_json, sweeps_of
from wtb_conf.cli.options import json_option, not_with, store_command
from wtb_conf.store import Store, StoreError

FORMATS = ("table", "json", "csv", "junit", "markdown")


@store_command("compare", "one row per job: varying params, status, metrics and scores with "
                          "their intervals, the best job, gates (read-only)", readonly=True)
@click.argument("sweeps", nargs=-1, metavar="[SWEEP]...")
@click.option("--cases", is_flag=True, help="one row per job and case (and trial)")
@click.option("--sort", metavar="KEY", help="sort by a column (-KEY: descending)")
@click.option("--baseline", metavar="REF",
              help="test every job against this one: a job number, 'KEY=VALUE ...' (the job "
                   "with those params), a run id, or a sweep id (the same job of it); "
                   "default: compare.baseline")
@click.option("--fail-if", "fail_if", multiple=True, metavar="GATE",
              help="exit 1 when a job fails the gate, e.g. 'kept.f1 < baseline - 0.02' "
                   "(repeatable; default: compare.gates)")
@click.option("--gate-on", type=click.Choice(["interval", "mean"]), default="interval",
              show_default=True,
              help="interval: a gate fails only when the whole 95%% interval is past it")
@click.option("--format", "form", type=click.Choice(FORMATS), default="table",
              show_default=True, help="how to print it")
@json_option
@click.option("--csv", is_flag=True, callback=not_with("as_json"), help="--format csv")
def cmd_compare(store: Store, sweeps: tuple[str, ...], cases: bool, sort: str | None,
                baseline: str | None, fail_if: tuple[str, ...], gate_on: str, form: str,
                as_json: bool, csv: bool) -> int:
    """SWEEP...: sweep ids (or prefixes), or 'last' (the default). Exits 1 when a gate
    fails."""
    from wtb_conf.config.gates import GateError
    from wtb_conf.results import compare, formats, gates, table

    form = "json" if as_json else "csv" if csv else form
    sweeps = sweeps_of(store, sweeps)
    try:
        judged = gates.judged(store, sweeps, cases=cases or form == "junit",
                              baseline=baseline, fail_if=fail_if, on=gate_on)
    except GateError as e:
        raise StoreError(str(e)) from None
    rows = compare.sort_rows(judged.rows, sort) if sort else judged.rows
    failed = 1 if any(g["failed"] for g in judged.gates) else 0
    title = "sweep " + ", ".join(s[:8] for s in sweeps) + (
        f" — baseline {judged.baseline}" if judged.baseline else "")
    if form == "json":
        print_json([{k: v for k, v in r.items() if k != "_values"} for r in rows])
    elif form == "csv":
        print(table.to_csv(rows), end="")
    elif form == "junit":
        print(formats.junit(rows, judged.gates, title), end="")
    elif form == "markdown":
        print(formats.markdown(judged.jobs if not cases else rows, title, judged.note,
                               gates.lines(judged.gates)), end="")
    else:
        table.print_rows(rows, title, judged.note)
        if judged.gates:
            print("\n".join(gates.lines(judged.gates)))
    return failed


def _is_override(word: str) -> bool:
    return "=" in word or word.startswith(("~", "+"))


@store_command("evaluate", "score stored runs again with their evaluators (or changed ones); "
                           "nothing runs")
@click.argument("refs", nargs=-1, metavar="[SWEEP|RUN|OVERRIDE]...")
def cmd_evaluate(store: Store, refs: tuple[str, ...]) -> int:
    """Sweeps or runs (ids, prefixes; 'last', the default, is the last sweep), and Hydra
    overrides of their stored configs (words with '='), e.g.
    workflow.evaluators.total_ok.abs_tol=1"""
    from wtb_conf.cli.overrides import check_overrides
    from wtb_conf.job.scoring import evaluate_stored
    from wtb_conf.results import compare, table

    overrides = [w for w in refs if _is_override(w)]
    run_ids, sweeps = [], []
    for ref in [w for w in refs if not _is_override(w)] or ["last"]:
        kind, found = store.run_or_sweep(ref)
        if kind == "run":
            run_ids.append(found)
            sweeps.append(store.run(found)["sweep_id"])
        else:
            run_ids += [r["run_id"] for r in compare.rows(store, [found])[0]]
            sweeps.append(found)
    run_ids = list(dict.fromkeys(run_ids))
    # Checked for every run before any is scored: the newest evaluation counts everywhere, so
    # a bad override must record nothing (docs/cli.md).
    if errors := check_overrides(store, run_ids, overrides):
        for error in errors:
            print(f"wtb: error: {error}", file=sys.stderr)
        print("wtb: nothing scored, nothing recorded", file=sys.stderr)
        return 1
    failed = 0
    for run_id in run_ids:  # one run that cannot be scored stops no other
        try:
            summary = evaluate_stored(store, run_id, overrides)
        except StoreError as e:
            print(f"wtb: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"wtb: run {run_id[:8]} scored again: " + (", ".join(
            f"{k}={table.fmt(v)}" for k, v in summary["scores"].items()) or "no evaluators"))
    sweeps = list(dict.fromkeys(sweeps))
    rows, note = compare.rows(store, sweeps)
    table.print_rows(rows, "sweep " + ", ".join(s[:8] for s in sweeps), note)
    return 1 if failed else 0


@store_command("report", "a self-contained HTML report of sweeps (read-only)", readonly=True)
@click.argument("sweeps", nargs=-1, metavar="[SWEEP]...")
@click.option("--out", default="report.html", show_default=True, help="the HTML file to write")
def cmd_report(store: Store, sweeps: tuple[str, ...], out: str) -> None:
    """SWEEP...: sweep ids (or prefixes), or 'last' (the default)."""
    from wtb_conf.results.report import write_report

    sweeps = sweeps_of(store, sweeps)
    path = write_report(store, sweeps, Path(out))
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): open it in a browser")

COMMANDS = (cmd_compare, cmd_evaluate, cmd_report)
