"""Hydra's BasicSweeper with a covering array of strength 2 instead of the cartesian product.

Overrides are parsed as BasicSweeper parses them (`hydra.sweeper.params`, then the command
line); only the list of jobs differs: every pair of values of any two swept parameters is in
at least one job. The jobs are a sub-list of the grid, in the grid's order.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from hydra.errors import CompactHydraException

log = logging.getLogger(__name__)


class PairwiseSweepError(CompactHydraException):
    """Bad sweep input; Hydra prints the message alone, without a stack trace."""


def covering_array(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Rows of value indexes (row[i] < sizes[i]) covering every pair of values of any two
    positions, sorted (so the first row is all zeros). The grid when fewer than two positions
    have more than one value. Deterministic: depends on `sizes` only."""
    for i, size in enumerate(sizes):
        if size < 1:
            raise ValueError(f"position {i} has no values")
    swept = [i for i, size in enumerate(sizes) if size > 1]
    if len(swept) < 2:
        return list(itertools.product(*(range(size) for size in sizes)))
    # Imported here, not at module load: Hydra imports every plugin on every start.
    from allpairspy import AllPairs

    # Largest first: allpairspy (like IPOG) covers the pairs of the first two exactly and
    # fits the others in; this order gives it fewer rows.
    order = sorted(swept, key=lambda i: -sizes[i])
    rows = set()
    for found in AllPairs([list(range(sizes[i])) for i in order]):
        row = [0] * len(sizes)
        for i, value in zip(order, found, strict=True):
            row[i] = value
        rows.add(tuple(row))
    return sorted(rows)


class WtbPairwiseSweeper(BasicSweeper):
    """`hydra/sweeper=wtb_pairwise`. BasicSweeper's `sweep()` calls `self.split_arguments`;
    that is all this class replaces."""

    @staticmethod
    def split_arguments(
        overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        # key -> its overrides ("key=value"), one per value, as BasicSweeper makes them: a
        # later override of the same key (the command line's) replaces an earlier one.
        choices: dict[str, list[str]] = {}
        for override in overrides:
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
                continue
            if not override.is_discrete_sweep():
                raise PairwiseSweepError(
                    f"wtb_pairwise: '{override.input_line}': only lists of values can be "
                    f"swept (a,b / range / choice / glob), not an interval"
                )
            values = [f"{key}={value}" for value in override.sweep_string_iterator()]
            if not values:
                raise PairwiseSweepError(
                    f"wtb_pairwise: '{override.input_line}': {key} has no values to sweep"
                )
            choices[key] = values
        if max_batch_size is not None and max_batch_size < 1:
            raise PairwiseSweepError(
                f"wtb_pairwise: hydra.sweeper.max_batch_size must be positive or unset, "
                f"not {max_batch_size}"
            )

        lists = list(choices.values())
        jobs = [[lists[i][v] for i, v in enumerate(row)]
                for row in covering_array([len(values) for values in lists])]
        swept = sum(len(values) > 1 for values in lists)
        log.info("wtb_pairwise: %d jobs cover every pair of values of %d swept parameters "
                 "(the grid has %d)", len(jobs), swept, math.prod(len(v) for v in lists))
        if max_batch_size is None:
            return [jobs]
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))
