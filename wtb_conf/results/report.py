"""`wtb report`: one self-contained HTML file about sweeps, to open from disk or mail around.

Everything is inline (styles, a few lines of script for sorting, charts as SVG drawn by
matplotlib), and a Content-Security-Policy forbids loading anything else, so the file
fetches nothing when opened. Per-run detail stays compact (file lists collapsed and capped)
so a 200-job sweep stays a few MB.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
from collections import Counter
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from wtb_conf.results import compare
from wtb_conf.store import Store

MAX_FILES = 40  # files listed per run; the restore command gives the rest
MAX_TRACEBACK = 20_000  # characters per traceback kept in the page
LABEL_MAX = 50  # jobs up to which every bar of a chart is labelled by its params
BAR, BEST_BAR, FAILED_BAR = "#7a9cc6", "#e08a1e", "#d9534f"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px;margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #ccc}
.sub{color:#555;margin:2px 0}nav a{margin-right:14px}.wide{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 8px;border:1px solid #ddd}
td{white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;background:#f3f3f3;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tr.failed td{background:#f8d7da}tr.best td{background:#fff3cd;font-weight:600}
.star{color:#e08a1e}code,pre{font:12px ui-monospace,monospace}.bad{color:#b02a37}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;max-height:420px}.note{color:#666;font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #eee}
figure svg{display:block;max-width:100%;height:auto}
.run{border-top:1px solid #eee;padding:6px 0}.run h3{font-size:15px;margin:4px 0}
"""

# Sorts the rows of a table.sortable by the clicked column: numbers as numbers, empty last.
SCRIPT = """
document.querySelectorAll('table.sortable').forEach(table => {
  const heads = [...table.tHead.rows[0].cells], body = table.tBodies[0];
  heads.forEach((th, col) => th.addEventListener('click', () => {
    const asc = th.getAttribute('aria-sort') !== 'ascending';
    heads.forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    const key = tr => tr.cells[col].dataset.v ?? tr.cells[col].textContent.trim();
    [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === '' || y === '') return (x === '') - (y === '');
      const d = isNaN(x) || isNaN(y) ? x.localeCompare(y) : x - y;
      return asc ? d : -d;
    }).forEach(tr => body.appendChild(tr));
  }));
});
"""

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:")
DURATION_NOTE = (
    "A node's duration is approximate: the time from the previous event of its case (usually "
    "the commit of the step before) to the event logged when the node finished, so it includes "
    "LangGraph's own work between steps; nodes that ran in the same step share that time. A "
    "cache hit shows the durations of the run it reused.")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _size(n: int) -> str:
    return f"{n} B" if n < 1000 else f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def _short(run_id: str | None) -> str:
    return escape((run_id or "")[:8])


def _run_link(run_id: str, known: set[str]) -> str:
    code = f"<code>{_short(run_id)}</code>"
    return f'<a href="#run-{_short(run_id)}">{code}</a>' if run_id in known else code


def _label(row: dict[str, Any], params: list[str], several: bool) -> str:
    values = " · ".join(str(row["params"].get(p, "")) for p in params)
    prefix = f"{_short(row['sweep_id'])}/" if several else ""
    text = f"{prefix}#{row['job_num']} {values}".strip()
    return text if len(text) <= 48 else text[:47] + "…"


def node_durations(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds per node call, by node: each `node` event minus the previous event of the
    same thread (the approximation DURATION_NOTE explains)."""
    last: dict[str, datetime] = {}
    out: dict[str, list[float]] = {}
    for event in events:
        thread = event["data"].get("thread_id")
        if not thread:
            continue
        at = datetime.fromisoformat(event["at"])
        if event["kind"] == "node" and thread in last:
            out.setdefault(event["data"]["node"], []).append(
                (at - last[thread]).total_seconds())
        last[thread] = at
    return out


def _svg(fig: Any, salt: str) -> str:
    import matplotlib

    # clip-path ids are hashes: a salt per chart keeps them unique within the page
    matplotlib.rcParams["svg.hashsalt"] = salt
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return f'<figure>{text[text.index("<svg"):]}</figure>'  # inline: no XML prolog


def _figure(title: str, labels: list[str], jobs: list[str],
            right: float = 0.25) -> tuple[Any, Any]:
    """A figure with one horizontal slot per job, top to bottom in table order. Up to
    LABEL_MAX jobs each is labelled by its params; beyond, by a few job numbers (labels
    are most of matplotlib's drawing time, and 200 of them are unreadable anyway).
    Margins are estimated from the label lengths: constrained layout measures every text
    again and doubles the time. `right`: inches kept free on the right (a legend)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure registry to leak
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    n = len(labels)
    shown = labels if n <= LABEL_MAX else jobs
    width, height = 4.1 + right, 0.9 + (0.2 if n <= LABEL_MAX else 0.06) * max(n, 2)
    fig = Figure(figsize=(width, height))
    left = 0.25 + 0.062 * max(map(len, shown), default=4)  # ~ inches of 8 pt text
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - 0.35 / height,
                        bottom=0.35 / height)
    ax = fig.add_subplot()
    if n <= LABEL_MAX:
        ax.set_yticks(range(n), labels)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(24, integer=True))
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda y, _: jobs[int(y)] if 0 <= y < n else ""))
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_title(title, fontsize=10)
    return fig, ax


def _bars(ax: Any, lefts: list[float], widths: list[float], colors: Any,
          label: str | None = None) -> None:
    # one collection instead of a Rectangle per bar: 200 bars draw 3x faster
    from matplotlib.collections import PolyCollection

    verts = [[(a, y - 0.4), (a + w, y - 0.4), (a + w, y + 0.4), (a, y + 0.4)]
             for y, (a, w) in enumerate(zip(lefts, widths, strict=True))]
    ax.add_collection(PolyCollection(verts, facecolors=colors, linewidths=0, label=label))
    ax.autoscale_view(scaley=False)


def _charts(rows: list[dict[str, Any]], labels: list[str], jobs: list[str]) -> list[str]:
    """One horizontal bar chart per numeric column, the best job's bar highlighted."""
    out = []
    colors = [BEST_BAR if r["best"] else FAILED_BAR if r["status"] == "failed" else BAR
              for r in rows]
    for name in compare.numeric_columns(rows):
        values = [compare.number(compare.value_of(r, name)) for r in rows]
        present = [v for v in values if v is not None]
        if not present:  # a metric that is text, not a number
            continue
        fig, ax = _figure(name, labels, jobs)
        _bars(ax, [0.0] * len(rows), [v or 0.0 for v in values], colors)
        lo, hi = min(0.0, *present), max(0.0, *present)
        pad = 0.2 * ((hi - lo) or 1.0)  # room for the value written after each bar
        ax.set_xlim(lo - (pad if lo < 0 else 0), hi + pad)
        for y, v in enumerate(values if len(rows) <= LABEL_MAX else []):
            ax.text(v or 0.0, y, " n/a " if v is None else f" {v:.4g} ", va="center",
                    ha="right" if (v or 0) < 0 else "left", fontsize=7, color="#333")
        out.append(_svg(fig, name))
    return out


def _durations_chart(per_job: list[dict[str, list[float]]], labels: list[str],
                     jobs: list[str]) -> str:
    """Time per node per job, stacked."""
    import matplotlib

    nodes = list(dict.fromkeys(n for d in per_job for n in d))
    if not nodes:
        return ""
    legend = 0.7 + 0.062 * max(map(len, nodes))
    fig, ax = _figure("time per node (ms, all cases)", labels, jobs, legend)
    left = [0.0] * len(labels)
    for i, node in enumerate(nodes):
        ms = [sum(d.get(node, [])) * 1e3 for d in per_job]
        _bars(ax, left, ms, [matplotlib.colormaps["tab20"](i % 20)], node)
        left = [a + b for a, b in zip(left, ms, strict=True)]
    ax.set_xlim(0, max(left) * 1.02 or 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return _svg(fig, "durations")


def _table(rows: list[dict[str, Any]], params: list[str], numbers: list[str],
           several: bool) -> str:
    names = compare.short_names(params)
    heads = (["sweep"] if several else []) + ["job", "run", *params, "status", "duration",
                                               *numbers, "best"]
    # headers may wrap after `.` and `_`, so a wide table still fits a screen
    th = "".join(f'<th title="{escape(h)}">' + escape(names.get(h, h)).replace(".", ".<wbr>")
                 .replace("_", "_<wbr>") + "</th>" for h in heads)
    body = []
    for r in rows:
        cells = [f"<td><code>{_short(r['sweep_id'])}</code></td>"] if several else []
        cells.append(f'<td class="n" data-v="{r["job_num"]}">{r["job_num"]}</td>')
        cells.append(f'<td><a href="#run-{_short(r["run_id"])}"><code>'
                     f'{_short(r["run_id"])}</code></a></td>')
        cells += [f"<td>{escape(str(r['params'].get(p, '')))}</td>" for p in params]
        error = r["error"] or ""
        brief = f" ({error[:60]}…)" if len(error) > 60 else f" ({error})" if error else ""
        cells.append(f'<td data-v="{escape(r["status"])}" title="{escape(error)}">'
                     f'{escape(r["status"] + brief)}</td>')
        d = r["duration_s"]
        cells.append(f'<td class="n" data-v="{"" if d is None else d}">'
                     f'{"" if d is None else f"{d:.2f} s"}</td>')
        for name in numbers:
            v = compare.value_of(r, name)
            key = "" if compare.number(v) is None else repr(compare.number(v))
            cells.append(f'<td class="n" data-v="{escape(key)}">{escape(compare.fmt(v))}</td>')
        cells.append('<td data-v="1"><span class="star">★</span> best</td>' if r["best"]
                     else '<td data-v=""></td>')
        cls = "failed" if r["status"] == "failed" else "best" if r["best"] else ""
        body.append(f'<tr class="{cls}" data-run="{escape(r["run_id"])}">{"".join(cells)}</tr>')
    return (f'<div class="wide"><table class="sortable" id="comparison"><thead><tr>{th}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def _durations(all_durations: dict[str, dict[str, list[float]]]) -> str:
    """Per node, over every run that executed it (a reused run counts once)."""
    runs: dict[str, list[list[float]]] = {}
    for d in all_durations.values():
        for node, secs in d.items():
            runs.setdefault(node, []).append(secs)
    if not runs:
        return "<p>No node events were logged for these runs.</p>"
    th = "".join(f"<th>{h}</th>" for h in "node runs calls mean median max total".split())
    body = "".join(
        f'<tr><td>{escape(node)}</td><td class="n">{len(r)}</td><td class="n">{len(s)}</td>'
        + "".join(f'<td class="n" data-v="{v}">{_ms(v)}</td>' for v in (
            statistics.fmean(s), statistics.median(s), max(s), sum(s))) + "</tr>"
        for node, r in runs.items() for s in [[x for secs in r for x in secs]])
    return f'<table class="sortable"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _pre(text: str) -> str:
    if len(text) > MAX_TRACEBACK:
        text = f"… ({len(text) - MAX_TRACEBACK} characters left out)\n" + text[-MAX_TRACEBACK:]
    return f"<pre>{escape(text)}</pre>"


def _problems(rows: list[dict[str, Any]], case_rows: list[dict[str, Any]]) -> list[str]:
    """compare's failure lines per case; per job for a job with no cases (it failed first)."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for c in case_rows:
        by_run.setdefault(c["run_id"], []).append(c)
    return compare.failure_lines([c for r in rows for c in by_run.get(r["run_id"], [r])])


def _failures(rows: list[dict[str, Any]], lines: list[str],
              threads: dict[str, list[dict[str, Any]]], store: Store) -> str:
    if not lines:
        return "<p>No failures: every job and every evaluator ran cleanly.</p>"
    out = ["<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>"]
    for r in rows:
        bad = [t for t in threads[r["run_id"]] if t["status"] == "failed"]
        if r["status"] != "failed" and not bad:
            continue
        out.append(f'<h3 class="bad">job {r["job_num"]} (run {_short(r["run_id"])}): '
                   f'{escape(r["error"] or "failed")}</h3>')
        for t in bad:
            node = escape(t["failed_node"] or "?")
            out.append(f'<p>case <b>{escape(t["case"])}</b> failed in node <b>{node}</b>: '
                       f'{escape(t["error"] or "")}</p>' + _pre(t["traceback"] or ""))
        if not bad:  # failed before or outside any case (a config error, a lost process)
            out.append(_pre(store.run(r["run_id"])["traceback"] or "(no traceback recorded)"))
    return "".join(out)


def _run_section(r: dict[str, Any], label: str, threads: list[dict[str, Any]],
                 durations: dict[str, list[float]], tree: dict[str, Any] | None,
                 known: set[str]) -> str:
    short = _short(r["run_id"])
    cls = ' class="bad"' if r["status"] == "failed" else ""
    parts = [f'<div class="run" id="run-{short}"><h3{cls}>{escape(label)} — run '
             f'<code>{short}</code> {escape(r["status"])}</h3>']
    lineage = []
    if r["parent_run"]:  # the fork.* overrides say which kind of time travel made it
        how = ("rolled back from" if "fork.pause" in r["params"] else "forked from"
               if {"fork.checkpoint", "fork.after"} & set(r["params"]) else "resumed from")
        lineage.append(f"{how} run {_run_link(r['parent_run'], known)}")
    if r["cached_from"]:
        lineage.append(f"cache hit of run {_run_link(r['cached_from'], known)}: its cases, "
                       "events and files are that run's")
    if any(t["parent_thread"] for t in threads):
        lineage.append("cases forked from checkpoints of other runs (below)")
    parts.append(f"<p>{'; '.join(lineage) or 'its cases started from their inputs'}</p>")
    cases = []
    for t in threads:
        came = ""
        if t["parent_thread"]:
            run_id, _, case = t["parent_thread"].partition("/")
            came = (f"from {_run_link(run_id, known)}/{escape(case)}, inherited "
                    f"{escape(', '.join(t['inherited']) or 'nothing')}")
        node = f" in {escape(t['failed_node'])}" if t["failed_node"] else ""
        cases.append(f"<li><b>{escape(t['case'])}</b>: {escape(t['status'])}{node}"
                     f"{'; ' + came if came else ''}</li>")
    if cases:
        parts.append(f"<ul>{''.join(cases)}</ul>")
    if durations:
        parts.append('<p class="note">nodes: ' + " · ".join(
            f"{escape(n)} {_ms(sum(s))}" + (f" ({len(s)}×)" if len(s) > 1 else "")
            for n, s in durations.items()) + "</p>")
    if tree is not None:
        size = sum(e.size for e in tree.values())
        items = "".join(f"<li><code>{escape(p)}</code> {_size(e.size)}</li>"
                        for p, e in sorted(tree.items())[:MAX_FILES])
        more = f"<li>… and {len(tree) - MAX_FILES} more</li>" if len(tree) > MAX_FILES else ""
        parts.append(f"<details><summary>{len(tree)} files ({_size(size)}) at commit "
                     f"<code>{_short(r['commit'])}</code></summary><ul>{items}{more}"
                     "</ul></details>")
        parts.append(f"<p>restore them: <code>wtb restore {short} --to run-{short}</code></p>")
    return "".join(parts) + "</div>"


def _headline(rows: list[dict[str, Any]], sweep_ids: list[str], params: list[str],
              note: str | None) -> tuple[str, str]:
    """The page's heading (its sweeps) and the line under it (objective, best job)."""
    heading = (f"wtb report: sweep{'s' if len(sweep_ids) > 1 else ''} "
               f"{', '.join(_short(s) for s in sweep_ids)}")
    scored = next((r for r in rows if r["objective"]), None)
    if scored is None:
        return heading, "no objective set (compare.objective): no best job"
    sub = f"objective {scored['objective']} ({scored['mode']})"
    best = next((r for r in rows if r["best"]), None)
    if best is not None:
        chosen = " ".join(f"{k}={best['params'][k]}" for k in params if k in best["params"])
        sub += (f"; best: ★ job {best['job_num']} (run {_short(best['run_id'])}) {chosen} = "
                f"{compare.fmt(compare.value_of(best, best['objective']))}")
    return heading, sub + (f"; {note}" if note else "")


def render(store: Store, sweep_ids: list[str]) -> str:
    """The report's HTML."""
    import matplotlib

    rows, note = compare.rows(store, sweep_ids)
    case_rows, _ = compare.rows(store, sweep_ids, cases=True)
    params = compare.varying_params(rows)
    several = len(sweep_ids) > 1
    labels = [_label(r, params, several) for r in rows]
    jobs = [f"{_short(r['sweep_id'])}/#{r['job_num']}" if several else f"#{r['job_num']}"
            for r in rows]
    threads, durations, trees, events = {}, {}, {}, {}
    for r in rows:  # a handful of small queries per run: ~1 ms each
        source = r["cached_from"] or r["run_id"]  # a cache hit ran nothing itself
        if source not in events:
            events[source] = node_durations(store.events(source))
        threads[r["run_id"]], durations[r["run_id"]] = store.threads(source), events[source]
        if r["commit"] and r["commit"] not in trees:
            trees[r["commit"]] = store.tree(r["commit"])
    # svg.fonttype none: labels stay <text>, not paths (smaller, selectable, searchable)
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 8}):
        charts = "".join(_charts(rows, labels, jobs)) or "<p>No numeric columns.</p>"
        stacked = _durations_chart([durations[r["run_id"]] for r in rows], labels, jobs)
    known = {r["run_id"] for r in rows}
    sections = "".join(_run_section(r, label, threads[r["run_id"]], durations[r["run_id"]],
                                    trees.get(r["commit"]), known)
                       for r, label in zip(rows, labels, strict=True))
    heading, sub = _headline(rows, sweep_ids, params, note)
    counts = ", ".join(f"{n} {s}" for s, n in Counter(r["status"] for r in rows).items())
    commands = "".join(
        f'<p class="sub">sweep <code>{_short(s)}</code> started '
        f"{escape(sw['created_at'][:19])} UTC: <code>python -m wtb_conf "
        f"{escape(' '.join(sw['argv']))}</code></p>" for s in sweep_ids for sw in [store.sweep(s)])
    problems = _problems(rows, case_rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(f"{heading} — {sub}")}</title><style>{CSS}</style></head><body>
<h1>{escape(heading)}</h1><p class="sub">{escape(sub)}</p>
<p class="sub">{len(rows)} jobs: {escape(counts)}</p>{commands}
<nav><a href="#compare">comparison</a><a href="#charts">charts</a>
<a href="#durations">node durations</a><a href="#failures">failures ({len(problems)})</a>
<a href="#runs">runs</a></nav>
<h2 id="compare">Comparison</h2>
<p class="note">Click a column header to sort; hover it for the full key. Red: failed.</p>
{_table(rows, params, compare.numeric_columns(rows), several)}
<h2 id="charts">Charts</h2>
<p class="note">One bar per job, labelled by the params that vary; the best job in orange,
failed jobs in red.</p>
<div class="charts">{charts}</div>
<h2 id="durations">Node durations</h2><p class="note">{escape(DURATION_NOTE)}</p>
<div class="charts"><div>{_durations(events)}</div>{stacked}</div>
<h2 id="failures">Failures</h2>
{_failures(rows, problems, threads, store)}
<h2 id="runs">Runs</h2>
<p class="note">Run <code>wtb</code> where the sweep ran (or pass <code>--db</code> and
<code>--blobs</code>).</p>
{sections}
<script>{SCRIPT}</script></body></html>
"""


def write_report(store: Store, sweep_ids: list[str], out: Path) -> Path:
    """Write the report of these sweeps to `out` atomically (a temporary sibling renamed into
    place), so a reader never sees half a file; return `out`."""
    page = render(store, sweep_ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
