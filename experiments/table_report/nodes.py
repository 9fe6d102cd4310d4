"""Nodes of the table_report workflow (experiments/envs_demo.yaml): the same code renders a
different table depending on the tabulate version installed in the job's env."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from wtb_conf import launch_dir


def load(state: dict) -> dict:
    with open(launch_dir() / state["input_csv"], newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["amount"] not in ("", "n/a", "oops")]
    return {"rows": rows}


def render(state: dict) -> dict:
    import tabulate

    # tabulate 0.9 added the simple_grid format; older releases fall back to grid.
    fmt = "simple_grid" if "simple_grid" in tabulate.tabulate_formats else "grid"
    data = [[r["region"], r["product"], float(r["amount"])] for r in state["rows"]]
    table = tabulate.tabulate(data,
                              headers=["region", "product", "amount"], tablefmt=fmt)
    Path("table.txt").write_text(table + "\n")
    return {"tabulate_version": tabulate.__version__, "table_format": fmt,
            "python": sys.executable}
