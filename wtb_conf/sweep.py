"""The Hydra callback that brackets a sweep: opens its record, prints its table, sets the exit.

Registered in the packaged config.yaml under `hydra.callbacks.wtb`. It runs in the driver,
whatever launcher runs the jobs, and learns how the jobs went from the store.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from wtb_conf import compare
from wtb_conf.intake import SWEEP_ENV, open_store_for
from wtb_conf.replay import SWEEP_ID_FILE
from wtb_conf.store.lifecycle import DONE

# Hydra turns exceptions raised by callbacks into warnings, so the callback leaves the exit
# status here and `python -m wtb_conf` exits with it once Hydra returns.
exit_status = 0
# The sweep still open, if Hydra stopped before calling on_*_end (a job's exception re-raised
# by the sweeper, Ctrl-C): `python -m wtb_conf` closes it on the way out.
_open: tuple[SweepCallback, DictConfig] | None = None


def close_open_sweep() -> None:
    if _open is not None:
        callback, config = _open
        callback._end(config)


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.sweep_id: str | None = None

    def _start(self, config: DictConfig, sweep_dir: str | None) -> None:
        store, _ = open_store_for(config, Path.cwd())
        with store:
            self.sweep_id = store.create_sweep(sys.argv[1:], sweep_dir)
        if id_file := os.environ.pop(SWEEP_ID_FILE, None):  # a replay's `wtb` waits for it
            Path(id_file).write_text(self.sweep_id)
        os.environ[SWEEP_ENV] = self.sweep_id
        global _open
        _open = (self, config)

    def _end(self, config: DictConfig) -> None:
        global exit_status, _open
        _open = None
        os.environ.pop(SWEEP_ENV, None)
        if self.sweep_id is None:
            return
        with open_store_for(config, Path.cwd())[0] as store:
            store.finish_sweep(self.sweep_id)
            # a job retried after its actor died has several runs: the last one counts
            runs = list({r["job_num"]: r for r in store.runs(self.sweep_id)}.values())
            rows, note = compare.rows(store, [self.sweep_id])
        short = self.sweep_id[:8]
        compare.print_rows(rows, f"sweep {short} — `wtb compare {short}`", note,
                           failures=False)  # the failed jobs are listed on stderr below
        done = sum(r["status"] in DONE for r in runs)
        cached = sum(r["status"] == "cached" for r in runs)
        paused = sum(r["status"] == "paused" for r in runs)
        print(f"sweep {short}: {done} of {len(runs)} jobs completed"
              + (f" ({cached} cached)" if cached else "")
              + (f", {paused} paused (`wtb resume RUN` continues)" if paused else "")
              + f"; `wtb report {short}` writes an HTML report")
        failed = [r for r in runs if r["status"] == "failed"]
        if failed:
            lines = [
                f"  job {r['job_num']} ({' '.join(r['overrides']) or 'no overrides'}): "
                f"{r['error']} — `wtb show {r['run_id'][:8]}`"
                for r in failed
            ]
            print(f"{len(failed)} of {len(runs)} jobs failed:", *lines, sep="\n", file=sys.stderr)
            exit_status = 1

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, str(Path(config.hydra.sweep.dir).absolute()))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end(config)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, None)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end(config)
