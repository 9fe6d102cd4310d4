"""`wtb compare`, `evaluate` and `report`: how the runs did."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wtb_conf.cli.common import print_json, run_or_sweep, sweeps_of
from wtb_conf.cli.options import json_option, not_with, store_command
from wtb_conf.store import Store, StoreError


@store_command("compare", "one row per job: varying params, status, metrics, scores, the best "
                          "job (read-only)", readonly=True)
@click.argument("sweeps", nargs=-1, metavar="[SWEEP]...")
@click.option("--cases", is_flag=True, help="one row per job and case")
@click.option("--sort", metavar="KEY", help="sort by a column (-KEY: descending)")
@click.option("--baseline", metavar="RUN|SWEEP",
              help="add each number's difference to this run, or to the same job of this sweep")
@json_option
@click.option("--csv", is_flag=True, callback=not_with("as_json"), help="print it as CSV")
def cmd_compare(store: Store, sweeps: tuple[str, ...], cases: bool, sort: str | None,
                baseline: str | None, as_json: bool, csv: bool) -> None:
    """SWEEP...: sweep ids (or prefixes), or 'last' (the default)."""
    from wtb_conf.results import compare, table

    sweeps = sweeps_of(store, sweeps)
    rows, note = compare.rows(store, sweeps, cases=cases)
    if baseline:
        kind, ref = run_or_sweep(store, baseline)
        sweep = store.run(ref)["sweep_id"] if kind == "run" else ref
        base = [r for r in compare.rows(store, [sweep], cases=cases)[0]
                if kind == "sweep" or r["run_id"] == ref]
        if not base:
            raise StoreError(f"--baseline {baseline}: run {ref[:8]} is not the newest run "
                             "of its job; name that one")
        compare.add_baseline(rows, base, by_params=kind == "sweep")
    if sort:
        rows = compare.sort_rows(rows, sort)
    if as_json:
        return print_json([{k: v for k, v in r.items() if k != "_values"} for r in rows])
    if csv:
        return print(table.to_csv(rows), end="")
    title = "sweep " + ", ".join(s[:8] for s in sweeps)
    table.print_rows(rows, title + (f" — baseline {baseline}" if baseline else ""), note)


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
        kind, found = run_or_sweep(store, ref)
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
