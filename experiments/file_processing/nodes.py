"""Node functions of the file_processing demo workflow (conf/workflow/file_processing.yaml).

Each node takes the graph state (plus its YAML params) and returns a partial update. Files are
written with plain relative paths: while a node runs, the working directory is the case's
output directory (`wtb_conf.output_dir()`). Inputs are read relative to `wtb_conf.launch_dir()`.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from wtb_conf import launch_dir


def _amount(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def load(state: dict, settings_file: str) -> dict:
    """Read the case's CSV and the shared JSON settings."""
    source = launch_dir() / state["input_csv"]
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    settings = json.loads((launch_dir() / settings_file).read_text())
    Path("loaded.json").write_text(
        json.dumps({"source": state["input_csv"], "rows": len(rows),
                    "columns": list(rows[0]) if rows else []}, indent=2)
    )
    return {"rows": rows, "settings": settings, "rows_in": len(rows), "log": ["load"]}


def drop_invalid(state: dict) -> dict:
    """Variant `drop_invalid`: reject any row missing a required field or a numeric amount."""
    required = state["settings"]["required"]
    clean, rejected = [], []
    for row in state["rows"]:
        ok = all(row.get(k) for k in required) and _amount(row["amount"]) is not None
        (clean if ok else rejected).append(row)
    _write_csv("clean.csv", clean)
    return {"clean": clean, "rejected": rejected, "log": ["drop_invalid"]}


def strict_amounts(state: dict) -> dict:
    """Variant `strict_amounts`: like drop_invalid, but a negative amount is taken for a data
    error and stops the case (it fails on the `returns` case: a variant that breaks)."""
    for row in state["rows"]:
        amount = _amount(row["amount"])
        if amount is not None and amount < 0:
            raise ValueError(f"row {row['id']}: amount {row['amount']} is negative; "
                             "strict_amounts accepts sales only")
    return drop_invalid(state)


def fill_defaults(state: dict, default_region: str) -> dict:
    """Variant `fill_defaults`: fill a missing region and amount; reject rows with no product."""
    settings = state["settings"]
    clean, rejected = [], []
    for row in state["rows"]:
        if not row.get("product"):
            rejected.append(row)
            continue
        amount = _amount(row["amount"])
        clean.append({**row, "region": row["region"] or default_region,
                      "amount": str(settings["default_amount"] if amount is None else amount)})
    _write_csv("clean.csv", clean)
    return {"clean": clean, "rejected": rejected, "log": ["fill_defaults"]}


def validate(state: dict) -> dict:
    ratio = len(state["rejected"]) / max(state["rows_in"], 1)
    Path("validation.json").write_text(
        json.dumps({"rejected": len(state["rejected"]), "invalid_ratio": ratio}, indent=2)
    )
    return {"invalid_ratio": ratio, "log": ["validate"]}


def quality_gate(state: dict, max_invalid: float) -> str:
    """Router after `validate`: too many rejects go through quarantine first."""
    return "quarantine" if state["invalid_ratio"] > max_invalid else "summarize"


def quarantine(state: dict) -> dict:
    _write_csv("quarantine.csv", state["rejected"])
    return {"quarantined": len(state["rejected"]), "log": ["quarantine"]}


def summarize(state: dict) -> dict:
    settings = state["settings"]
    by_region: dict[str, float] = defaultdict(float)
    for row in state["clean"]:
        by_region[row["region"]] += float(row["amount"])
    totals = {k: round(v, settings["round_to"]) for k, v in sorted(by_region.items())}
    total = round(sum(totals.values()), settings["round_to"])
    Path("summary.json").write_text(json.dumps({"by_region": totals, "total": total}, indent=2))
    lines = [f"# Report ({settings['currency']})", "", "| region | amount |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in totals.items()]
    lines += ["", f"Rows in: {state['rows_in']}, kept: {len(state['clean'])}, "
                  f"quarantined: {state.get('quarantined', 0)}"]
    Path("report.md").write_text("\n".join(lines) + "\n")
    return {"total_amount": total, "rows_out": len(state["clean"]), "log": ["summarize"]}
