"""`wtb compare --format junit | markdown`: the comparison as a CI system reads it.

JUnit XML has one test per job x case (a trial of a case is a case here: `orders/3`): it
fails when the case failed, a pass/fail score of it is false, or an evaluator could not
score it; each gate on each job is one more test. Markdown is the table, the verdict and the
gates, for a CI step to post on a pull request.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from wtb_conf.results.compare import numeric_columns, short_names, value_of, varying_params
from wtb_conf.results.judge import best_text
from wtb_conf.results.table import cell, failure_lines, fmt, mark


def _job_label(row: dict[str, Any], params: list[str]) -> str:
    chosen = " ".join(f"{k}={row['params'][k]}" for k in params if k in row["params"])
    return f"job {row['job_num']}" + (f" {chosen}" if chosen else "")


def junit(case_rows: list[dict[str, Any]], gate_results: list[dict[str, Any]],
          title: str) -> str:
    params = varying_params(case_rows)
    suite = ET.Element("testsuite", name=title)
    failures = 0
    for r in case_rows:
        case = ET.SubElement(suite, "testcase", classname=_job_label(r, params),
                             name=str(r.get("case") or "(no case ran)"))
        why = []
        if r["status"] == "failed":
            why.append(f"failed{' in node ' + r['failed_node'] if r.get('failed_node') else ''}"
                       f": {r['error']}")
        why += [f"{name} is false" for name, v in r["scores"].items() if v is False]
        why += [f"evaluator {name}: {e}" for name, e in r["score_errors"].items()]
        if why:
            failures += 1
            ET.SubElement(case, "failure", message=why[0]).text = "\n".join(why)
    for g in gate_results:
        case = ET.SubElement(suite, "testcase", classname="gates",
                             name=f"{g['gate']} (job {g['job_num']})")
        if g["failed"]:
            failures += 1
            ET.SubElement(case, "failure", message=f"gate {g['gate']} failed").text = (
                f"value {g['value']:+.4g}, interval {g['interval']}, p {g['p']}, judged on "
                f"the {g['judged_on']}")
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict[str, Any]], title: str, note: str | None,
             gate_lines: list[str]) -> str:
    params = varying_params(rows)
    labels = short_names(params)
    numbers = numeric_columns(rows)
    head = ["job", "run", *(labels[p] for p in params), "status", *numbers, "best"]
    out = [f"### {_md(title)}", "", "| " + " | ".join(map(_md, head)) + " |",
           "|" + "|".join("---:" if h in numbers else "---" for h in head) + "|"]
    for r in rows:
        cells = [str(r["job_num"]), f"`{r['run_id'][:8]}`",
                 *(str(r["params"].get(p, "")) for p in params), r["status"],
                 *(cell(r, n) for n in numbers), mark(r)]
        out.append("| " + " | ".join(map(_md, cells)) + " |")
    best = next((r for r in rows if r["best"]), None)
    out.append("")
    if best is not None:
        out.append(f"**Best:** {_md(_job_label(best, params))}: {best['objective']} = "
                   f"{fmt(value_of(best, best['objective']))}{_md(best_text(best))}")
    if note:
        out.append(f"**{_md(note)}**")
    out += [f"- {_md(line)}" for line in gate_lines + failure_lines(rows)]
    return "\n".join(out) + "\n"
