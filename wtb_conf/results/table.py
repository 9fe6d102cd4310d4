"""The comparison as text: the table `wtb compare` prints (and the sweep ends with), its
CSV, and the lines under it (the verdict, failures, evaluator errors). Rows come from
wtb_conf.results.compare."""

from __future__ import annotations

import csv
import io
import shutil
import sys
from typing import Any

from wtb_conf.results.compare import numeric_columns, short_names, value_of, varying_params
from wtb_conf.results.judge import best_text


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_lines(rows: list[dict[str, Any]], title: str, color: bool = False,
                width: int | None = None) -> list[str]:
    """The comparison as aligned plain text: varying params, status, duration, numbers, best.
    Plain, not rich: rich measures and renders every cell, seconds for thousands of rows.
    `width`: a terminal's; a wider table is cut into blocks of columns, each led by the job
    and run columns, instead of each line wrapping into the next."""
    params = varying_params(rows)
    numbers = numeric_columns(rows)
    several = len({r["sweep_id"] for r in rows}) > 1
    cases = any("case" in r for r in rows)
    labels = short_names(params)
    cols = (["sweep"] if several else []) + ["job", "run", *params] + \
        (["case"] if cases else []) + ["status", "duration", *numbers, "best"]
    right = [c in numbers for c in cols]
    body = [[*([r["sweep_id"][:8]] if several else []), str(r["job_num"]), r["run_id"][:8],
             *(str(r["params"].get(p, "")) for p in params),
             *([r["case"] or ""] if cases else []),
             r["status"], "" if r["duration_s"] is None else f"{r['duration_s']:.1f}s",
             *(cell(r, n) for n in numbers),
             mark(r)] for r in rows]
    head = [labels.get(c, c) for c in cols]
    widths = [max([len(h), *(len(b[i]) for b in body)]) for i, h in enumerate(head)]
    out = [title]
    for block in _blocks(widths, cols.index("run") + 1, width):
        def line(cells: list[str], block: list[int] = block) -> str:
            return "  ".join(cells[i].rjust(widths[i]) if right[i] else cells[i].ljust(widths[i])
                             for i in block).rstrip()

        out += [""] if len(out) > 1 else []
        out.append(line(head))
        for cells, r in zip(body, rows, strict=True):
            text = line(cells)
            if color and r["status"] == "failed":
                text = text.replace("failed", "\x1b[31mfailed\x1b[0m", 1)
            out.append(text)
    return out


def _blocks(widths: list[int], keys: int, width: int | None) -> list[list[int]]:
    """Column indexes per block: all of them when they fit `width`; else the first `keys`
    columns, then as many of the others as fit, block after block."""
    every = list(range(len(widths)))
    if width is None or sum(widths) + 2 * (len(widths) - 1) <= width:
        return [every]
    lead = sum(widths[:keys]) + 2 * keys
    blocks: list[list[int]] = []
    for i in every[keys:]:
        if blocks and lead + sum(widths[j] + 2 for j in blocks[-1][keys:]) + widths[i] <= width:
            blocks[-1].append(i)
        else:
            blocks.append([*every[:keys], i])
    return blocks


def mark(row: dict[str, Any]) -> str:
    """The best column: ★ best, ≈ tied (with the best, by the tests), the baseline."""
    marks = ["★ best" if row["best"] else "≈ tied" if row.get("tied") else "",
             "baseline" if row.get("baseline_run") == row["run_id"] else ""]
    return " ".join(m for m in marks if m)


def cell(row: dict[str, Any], name: str) -> str:
    """`0.83±0.04 (+0.02*)`: the value, the half-width of its 95% interval when the job ran
    several trials (a pass rate's: `0.85 [0.64, 0.95]`), the difference to the
    baseline (`*`: significant after Holm); `~0.8`: a failed job's value over the cases
    that completed."""
    value = value_of(row, name)
    if value is None:
        return ""
    text = ("~" if row.get("partial") else "") + fmt(value)
    described = row.get("stats", {}).get(name) or {}
    ci = described.get("ci")
    # an interval over cases run once would mostly show how the cases differ: only trials
    # make it the noise of a job (the JSON has it either way); a complete job's success is 1
    if ci and ci[1] > ci[0] and row.get("trials", 1) > 1 and name != "success_rate":
        text += (f"±{(ci[1] - ci[0]) / 2:.2g}" if described["method"] == "t"
                 else f" [{ci[0]:.2g}, {ci[1]:.2g}]")  # Wilson's is not symmetric
    d = row.get("delta", {}).get(name)
    if d is not None:
        test = row.get("vs_baseline", {}).get(name) or {}
        text += f" ({d:+.3g}{'*' if test.get('significant') else ''})"
    return text


def failure_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per failed row (and per evaluator error): why, where, and what to look at."""
    return job_failure_lines(rows) + evaluator_error_lines(rows)


def job_failure_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per failed case of a row, or per failed row that has none."""
    lines = []
    for r in rows:
        where = f"job {r['job_num']}" + (f" case {r['case']}" if r.get("case") else "")
        show = f" — `wtb show {r['run_id'][:8]}`"
        for case in r.get("failed_cases") or []:  # a job row: each failed case
            node = f" in node {case['failed_node']}" if case["failed_node"] else ""
            lines.append(f"{where} case {case['case']} failed{node}: {case['error']}{show}")
        if r["status"] == "failed" and not r.get("failed_cases"):
            node = f" in node {r['failed_node']}" if r.get("failed_node") else ""
            lines.append(f"{where} failed{node}: {r['error']}{show}")
    return lines


def evaluator_error_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per evaluator that raised or returned what is not a score, per row."""
    lines = []
    for r in rows:
        where = f"job {r['job_num']}" + (f" case {r['case']}" if r.get("case") else "")
        for name, n in r["score_errors"].items():
            what = n if isinstance(n, str) else f"failed on {n} case(s)"
            lines.append(f"{where}: evaluator {name} {what} — `wtb show {r['run_id'][:8]}`")
    return lines


def best_line(best: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """`best: job 0 (run ab12cd34) variant=x: kept.f1 = 0.97 (max)`; no params part when
    none varies."""
    params = " ".join(f"{k}={best['params'][k]}" for k in varying_params(rows)
                      if k in best["params"])
    value = fmt(value_of(best, best["objective"]))
    return (f"best: job {best['job_num']} (run {best['run_id'][:8]})"
            f"{' ' + params if params else ''}: {best['objective']} = {value} ({best['mode']})"
            + best_text(best))


def to_csv(rows: list[dict[str, Any]]) -> str:
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    numbers = numeric_columns(rows)
    deltas = sorted({k for r in rows for k in r.get("delta", {})})
    cases = any("case" in r for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run_id", "sweep_id", "job_num", *params, *(["case"] if cases else []),
                     "status", "duration_s", *numbers, *(f"delta.{d}" for d in deltas),
                     "best", "error"])
    for r in rows:
        writer.writerow([r["run_id"], r["sweep_id"], r["job_num"],
                         *(r["params"].get(p, "") for p in params),
                         *([r["case"] or ""] if cases else []), r["status"], r["duration_s"],
                         *("" if (v := value_of(r, n)) is None else v for n in numbers),
                         *(r.get("delta", {}).get(d, "") for d in deltas), r["best"],
                         r["error"] or ""])
    return buf.getvalue()


def legend(rows: list[dict[str, Any]]) -> list[str]:
    """What the marks in the table mean, for the marks it has."""
    out = []
    if any(r.get("partial") for r in rows):
        out.append("~: a failed job's value over the cases that completed (never ranked)")
    if any(r.get("vs_baseline") for r in rows):
        out.append("(+d): the difference to the baseline on the same (case, trial) pairs; *: "
                   "significant after Holm's correction")
    return out


def print_rows(rows: list[dict[str, Any]], title: str, note: str | None = None,
               failures: bool = True) -> None:
    """The comparison table, then the best job and (`failures`) why jobs failed, on stdout."""
    tty = sys.stdout.isatty()
    lines = table_lines(rows, title, color=tty,
                        width=shutil.get_terminal_size().columns if tty else None)
    best = next((r for r in rows if r["best"]), None)
    if best is not None:
        lines.append(best_line(best, rows))
    if note:
        lines.append(note)
    lines += legend(rows)
    # the sweep lists failed jobs itself (on stderr), but not what evaluators could not score
    lines += failure_lines(rows) if failures else evaluator_error_lines(rows)
    sys.stdout.write("\n".join(lines) + "\n")
