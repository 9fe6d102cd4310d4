"""`wtb compare`, `evaluate` and `report`: how the runs did."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wtb_conf.cli.common import print_json, run_or_sweep, sweeps_of
from wtb_conf.store import Store, StoreError


def cmd_compare(store: Store, args: argparse.Namespace) -> None:
    from wtb_conf.results import compare

    sweeps = sweeps_of(store, args.sweeps)
    rows, note = compare.rows(store, sweeps, cases=args.cases)
    if args.baseline:
        kind, ref = run_or_sweep(store, args.baseline)
        sweep = store.run(ref)["sweep_id"] if kind == "run" else ref
        base = [r for r in compare.rows(store, [sweep], cases=args.cases)[0]
                if kind == "sweep" or r["run_id"] == ref]
        if not base:
            raise StoreError(f"--baseline {args.baseline}: run {ref[:8]} is not the newest run "
                             "of its job; name that one")
        compare.add_baseline(rows, base, by_params=kind == "sweep")
    if args.sort:
        rows = compare.sort_rows(rows, args.sort)
    if args.json:
        return print_json(rows)
    if args.csv:
        return print(compare.to_csv(rows), end="")
    title = "sweep " + ", ".join(s[:8] for s in sweeps)
    compare.print_rows(rows, title + (f" — baseline {args.baseline}" if args.baseline else ""),
                       note)


def cmd_evaluate(store: Store, args: argparse.Namespace) -> int:
    from wtb_conf.cli.overrides import check_overrides
    from wtb_conf.job.scoring import evaluate_stored
    from wtb_conf.results import compare

    def is_override(word: str) -> bool:
        return "=" in word or word.startswith(("~", "+"))

    args.overrides += [w for w in args.refs if is_override(w)]
    run_ids, sweeps = [], []
    for ref in [w for w in args.refs if not is_override(w)] or ["last"]:
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
    if errors := check_overrides(store, run_ids, args.overrides):
        for error in errors:
            print(f"wtb: error: {error}", file=sys.stderr)
        print("wtb: nothing scored, nothing recorded", file=sys.stderr)
        return 1
    failed = 0
    for run_id in run_ids:  # one run that cannot be scored stops no other
        try:
            summary = evaluate_stored(store, run_id, args.overrides)
        except StoreError as e:
            print(f"wtb: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"wtb: run {run_id[:8]} scored again: " + (", ".join(
            f"{k}={compare.fmt(v)}" for k, v in summary["scores"].items()) or "no evaluators"))
    sweeps = list(dict.fromkeys(sweeps))
    rows, note = compare.rows(store, sweeps)
    compare.print_rows(rows, "sweep " + ", ".join(s[:8] for s in sweeps), note)
    return 1 if failed else 0


def cmd_report(store: Store, args: argparse.Namespace) -> None:
    from wtb_conf.results.report import write_report

    sweeps = sweeps_of(store, args.sweeps)
    path = write_report(store, sweeps, Path(args.out))
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): open it in a browser")
