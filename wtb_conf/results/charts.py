"""The report's charts: horizontal bar charts drawn by matplotlib, as inline SVG text.

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


def metric_charts(rows: list[dict[str, Any]], labels: list[str], jobs: list[str]) -> list[str]:
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
