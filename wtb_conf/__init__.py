"""wtb_conf: a workflow test bench for LangGraph driven by Hydra configs.

Node functions may call `output_dir()` for the directory their files belong in (it is also
the working directory while they run) and `launch_dir()` for the directory the sweep was
started from, where a project's input files live, and `trial()` for which trial of its case
this is (`trials: N` runs each case N times) and the seed a stochastic node should draw from.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

__version__ = "0.1.0"

# Set by the job around each case. A job process runs one case at a time, so module state is
# enough, and it is visible from the threads LangGraph runs parallel nodes on.
_current: dict[str, Any] = {}


class Trial(NamedTuple):
    """Which run of its case a thread is. `seed` is derived from the case's input and `index`
    alone (docs/compare.md, "Trials"): the same in every variant, and in a rerun."""

    index: int  # 0 .. trials-1
    seed: int  # 0 <= seed < 2**63


def output_dir() -> Path:
    """The output directory of the case being run: write files here (or by relative path)."""
    try:
        return _current["output_dir"]
    except KeyError:
        raise RuntimeError("output_dir() is only available while a wtb_conf job runs") from None


def trial() -> Trial:
    """The trial being run: its index among the case's trials and its seed. Seed your
    randomness with it (`random.Random(trial().seed)`) and a rerun draws the same."""
    try:
        return _current["trial"]
    except KeyError:
        raise RuntimeError("trial() is only available while a wtb_conf job runs") from None


def launch_dir() -> Path:
    """The directory `python -m wtb_conf` was started from (the project directory)."""
    return _current.get("launch_dir") or Path.cwd()


@contextlib.contextmanager
def case_context(case_dir: Path, launch_dir: Path, trial: Trial | None = None,
                 ) -> Iterator[None]:
    """Nodes and evaluators run with the case's output dir as working directory and as
    output_dir(), and with the case's `trial()`."""
    case_dir.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    _current.update(output_dir=case_dir, launch_dir=launch_dir)
    if trial is not None:
        _current["trial"] = trial
    os.chdir(case_dir)
    try:
        yield
    finally:
        os.chdir(old)
        _current.pop("output_dir", None)
        _current.pop("trial", None)


__all__ = ["Trial", "launch_dir", "output_dir", "trial"]
