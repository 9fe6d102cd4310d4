"""What the user sees while a wtb_ray sweep runs: a live view on a terminal, plain lines
otherwise (CI logs), and a final table of the jobs."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def outcome(ret: JobReturn) -> tuple[str, dict[str, Any]]:
    """Status and what to show of a job. A task function that returns a mapping with `status`,
    `run_id` and `metrics` (as wtb_conf's job does) reports its own; otherwise Hydra's status
    counts. Per-case metrics (`case/name`) are left to `wtb show`."""
    if ret.status == JobStatus.FAILED:
        return "failed", {}
    value = ret.return_value
    if not isinstance(value, Mapping):
        return "completed", {}
    shown = {"run": str(value["run_id"])[:8]} if "run_id" in value else {}
    metrics = value.get("metrics")
    if isinstance(metrics, Mapping):
        shown.update((k, v) for k, v in metrics.items() if "/" not in str(k))
    return str(value.get("status", "completed")), shown


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    def __init__(self, overrides: list[list[str]], first_num: int, live: bool | None,
                 summary: bool = True) -> None:
        self.summary = summary
        self.overrides = overrides
        self.first_num = first_num
        self.console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)
        self.live_enabled = sys.stdout.isatty() if live is None else live
        self.status = ["pending"] * len(overrides)
        self.seconds: list[float | None] = [None] * len(overrides)
        self.metrics: list[dict[str, Any]] = [{} for _ in overrides]
        self.where = [""] * len(overrides)  # local, ray:<python>, planned, ...
        self.t0 = time.monotonic()
        self.live: Live | None = None
        self._streams: list[tuple[logging.StreamHandler, Any]] = []  # (handler, its stream)

    def __enter__(self) -> Progress:
        self.t0 = time.monotonic()
        if self.live_enabled:
            self.live = Live(self._view(), console=self.console, refresh_per_second=4,
                             transient=True)
            self.live.__enter__()
            self._logs_through_live()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            for handler, stream in self._streams:
                handler.setStream(stream)
            self.live.__exit__(*exc)
        if exc[0] is None and self.summary:
            self.console.print(self.table())

    def _logs_through_live(self) -> None:
        """Log lines go above the live view, not through it: Live redirects sys.stdout and
        sys.stderr, but a logging handler holds the stream it was given (Hydra's, made before),
        so its lines landed on the view's border and left stale copies of it in scrollback."""
        self._streams = []
        real = {id(sys.__stdout__): sys.stdout, id(sys.__stderr__): sys.stderr}
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in real:
                self._streams.append((handler, handler.setStream(real[id(handler.stream)])))

    def _update(self) -> None:
        if self.live is not None:
            self.live.update(self._view())

    def started(self, i: int, where: str) -> None:
        self.status[i], self.where[i] = "running", where
        self._update()

    def retrying(self, i: int) -> None:
        self.status[i] = "retrying"
        self._update()
        if self.live is None:
            print(f"[wtb_ray] job #{self.first_num + i} lost its process; retrying", flush=True)

    def finished(self, i: int, ret: JobReturn, seconds: float, where: str) -> None:
        self.status[i], self.metrics[i] = outcome(ret)
        self.seconds[i], self.where[i] = seconds, where
        self._update()
        if self.live is None:
            done = sum(s not in ("pending", "running", "retrying") for s in self.status)
            print(f"[wtb_ray] {done}/{len(self.status)} job #{self.first_num + i} "
                  f"{self.status[i]} in {seconds:.1f}s ({where}): "
                  f"{' '.join(self.overrides[i])}", flush=True)

    def _view(self) -> Group:
        done = sum(s not in ("pending", "running", "retrying") for s in self.status)
        failed = self.status.count("failed")
        running = self.status.count("running") + self.status.count("retrying")
        elapsed = time.monotonic() - self.t0
        eta = f"{elapsed / done * (len(self.status) - done):.0f}s" if done else "?"
        head = Text(f"wtb_ray  done {done - failed}  failed {failed}  running {running}  "
                    f"pending {self.status.count('pending')}  elapsed {elapsed:.0f}s  eta {eta}")
        return Group(head, self.table(only_active=True))

    def table(self, only_active: bool = False) -> Table:
        found = {k for m in self.metrics for k in m}
        names = (["run"] if "run" in found else []) + sorted(found - {"run"})[:6]
        table = Table(title=None if only_active else "wtb_ray jobs")
        for col in ("job", "overrides", "status", "where", "duration", *names):
            table.add_column(col)
        for i, status in enumerate(self.status):
            if only_active and status not in ("running", "retrying"):
                continue
            shown = f"[red]{status}[/red]" if status == "failed" else status
            seconds = self.seconds[i]
            table.add_row(str(self.first_num + i), " ".join(self.overrides[i]), shown,
                          self.where[i],
                          "-" if seconds is None else f"{seconds:.1f}s",
                          *(_fmt(self.metrics[i].get(n, "")) for n in names))
        return table
