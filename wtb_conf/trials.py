"""Trials: `trials: N` runs every case N times, each trial its own thread (docs/compare.md).

A thread's key within its run is its case's name when trials is 1 (as before trials existed)
and `CASE/TRIAL` otherwise: it is the last part of the thread id (`RUN/CASE/TRIAL`), the
output dir (`out/CASE/TRIAL/`), and the key of the thread's metrics, scores and comparison
rows. Case names have no '/', so a key splits back into its case and trial.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from wtb_conf import Trial


def case_key(case: str, trial: int, trials: int) -> str:
    return case if trials == 1 else f"{case}/{trial}"


def split_key(key: str) -> tuple[str, int]:
    """`orders/3` -> ("orders", 3); `orders` -> ("orders", 0) (and a name that is not a
    key, as a store written by hand may hold, is a case of its own)."""
    case, _, trial = key.rpartition("/")
    return (case, int(trial)) if case and trial.isdigit() else (key, 0)


def identity(inputs: Any, inputs_commit: str, trial: int) -> list[Any]:
    """What a trial's work depends on besides the workflow: the case's input, the commit of
    its input files and the index. Trial 0 is what a case was before trials, so its keys (and
    the prefixes stored under them) stay."""
    return [inputs, inputs_commit] + ([trial] if trial else [])


def trial_of(inputs: Any, inputs_commit: str, trial: int) -> Trial:
    """The trial's index and seed: the first 63 bits of SHA-256 over its `identity`. Not the
    variant's: every variant meets the same draws on the same trial (common random numbers,
    which pair the trials of two variants more tightly), and a rerun meets them again."""
    data = json.dumps(identity(inputs, inputs_commit, trial), sort_keys=True, default=str)
    return Trial(trial, int(hashlib.sha256(data.encode()).hexdigest()[:16], 16) >> 1)
