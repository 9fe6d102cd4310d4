"""The report's charts, drawn by matplotlib as inline SVG text: per number a dot and its
95% interval per job, and the node durations as stacked bars.

matplotlib is imported inside the functions: `wtb compare` and the sweep's end table import
this floor too, and should not pay for it.
"""

from __future__ import annotations

import io
from typing import Any

from wtb_conf.results import compare

LABEL_MAX = 50  # jobs up to which every bar of a chart is labelled by its params
BAR, BEST_BAR, FAILED_BAR = "#7a9cc6", "#e08a1e", "#d9534f"


def svg(fig: Any, salt: str) -> str:
    """The figure as an <svg> element, without the XML prolog, to inline in the page."""
    import matplotlib

    # clip-path ids are hashes: a salt per chart keeps them unique within the page
    matplotlib.rcParams["svg.hashsalt"] = salt
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


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


def interval_charts(rows: list[dict[str, Any]], labels: list[str], jobs: list[str],
                    ) -> list[str]:
    """One dot-and-whisker chart per numeric column: each job's mean and its 95% interval
    (wtb_conf.results.stats), the best job in orange, failed jobs' partial values hollow and
    red, the baseline's value a dashed line; "lower is better" on a min objective."""
    out = []
    colors = [BEST_BAR if r["best"] else FAILED_BAR if r.get("partial") or r["status"] ==
              "failed" else BAR for r in rows]
    base = next((r for r in rows if r.get("baseline_run") == r["run_id"]), None)
    for name in compare.numeric_columns(rows):
        points = []
        for r in rows:
            described = (r.get("stats") or {}).get(name) or {}
            value = compare.number(described.get("mean", compare.value_of(r, name)))
            points.append((value, described.get("ci")))
        present = [v for v, _ in points if v is not None]
        if not present:  # a metric that is text, not a number
            continue
        lower = any(r["objective"] == name and r["mode"] == "min" for r in rows)
        ys = [y for y, (v, _) in enumerate(points) if v is not None]
        partial = [i for i, y in enumerate(ys) if rows[y].get("partial")]
        reference = compare.number(((base or {}).get("stats") or {}).get(name, {}).get("mean"))
        legend = bool(partial) or reference is not None
        fig, ax = _figure(name + (" (lower is better)" if lower else ""), labels, jobs,
                          1.1 if legend else 0.25)
        xs = [points[y][0] for y in ys]
        lows = [(points[y][1] or [x, x])[0] for x, y in zip(xs, ys, strict=True)]
        highs = [(points[y][1] or [x, x])[1] for x, y in zip(xs, ys, strict=True)]
        ax.hlines(ys, lows, highs, colors=[colors[y] for y in ys], linewidth=1.4)
        whole = [i for i in range(len(ys)) if i not in partial]
        ax.scatter([xs[i] for i in whole], [ys[i] for i in whole], s=18, zorder=3,
                   c=[colors[ys[i]] for i in whole])
        if partial:
            ax.scatter([xs[i] for i in partial], [ys[i] for i in partial], s=18, zorder=3,
                       facecolors="white", edgecolors=FAILED_BAR, label="partial (failed)")
        if reference is not None:
            ax.axvline(reference, color="#555", linestyle="--", linewidth=0.8,
                       label="baseline")
        if legend:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        lo, hi = min(lows), max(highs)
        pad = 0.08 * ((hi - lo) or abs(hi) or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.grid(axis="x", color="#eee", linewidth=0.6)
        out.append(svg(fig, name))
    return out


def durations_chart(per_job: list[dict[str, list[float]]], labels: list[str],
                    jobs: list[str]) -> str | None:
    """Time per node per job, stacked; None when no node ran."""
    import matplotlib

    nodes = list(dict.fromkeys(n for d in per_job for n in d))
    if not nodes:
        return None
    legend = 0.7 + 0.062 * max(map(len, nodes))
    fig, ax = _figure("time per node (ms, all cases)", labels, jobs, legend)
    left = [0.0] * len(labels)
    for i, node in enumerate(nodes):
        ms = [sum(d.get(node, [])) * 1e3 for d in per_job]
        _bars(ax, left, ms, [matplotlib.colormaps["tab20"](i % 20)], node)
        left = [a + b for a, b in zip(left, ms, strict=True)]
    ax.set_xlim(0, max(left) * 1.02 or 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return svg(fig, "durations")
