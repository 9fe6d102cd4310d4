"""hydra/sweeper=wtb_pairwise: covering arrays of strength 2 instead of the grid."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException

from hydra_plugins.wtb_pairwise_sweeper.config import WtbPairwiseSweeperConf
from hydra_plugins.wtb_pairwise_sweeper.sweeper import (
    PairwiseSweepError,
    WtbPairwiseSweeper,
    covering_array,
)

ROOT = Path(__file__).resolve().parent.parent

# shape (values per parameter) -> the most jobs allowed (the grid's size unless said)
SHAPES = {
    (): 1,
    (3,): 3,
    (1, 4, 1): 4,
    (2, 2): 4,
    (5, 2): 10,
    (3, 3, 3): 27,
    (3, 3, 3, 3): 12,
    (2, 2, 2, 2, 2): 32,
    (2, 3, 4, 5): 120,
    (5, 4, 3, 2): 120,
    (1, 3, 3): 9,
    (2,) * 10: 1024,
    (3,) * 13: 3**13,
    (4, 4, 4, 4, 4): 4**5,
}


def uncovered(rows: list[tuple], shape: tuple[int, ...]) -> list[tuple]:
    """The (i, j, value_i, value_j) that no row has."""
    missing = []
    for i, j in itertools.combinations(range(len(shape)), 2):
        have = {(row[i], row[j]) for row in rows}
        missing += [(i, j, a, b) for a in range(shape[i]) for b in range(shape[j])
                    if (a, b) not in have]
    return missing


@pytest.mark.parametrize("shape", list(SHAPES), ids=lambda s: "x".join(map(str, s)) or "0")
def test_covering_array_covers_every_pair(shape):
    rows = covering_array(shape)
    assert uncovered(rows, shape) == []
    assert all(len(row) == len(shape) and all(0 <= v < n for v, n in zip(row, shape, strict=True))
               for row in rows)
    assert len(rows) <= min(SHAPES[shape], math.prod(shape))
    assert len(set(rows)) == len(rows) and rows == sorted(rows)  # the grid's order
    assert rows[0] == (0,) * len(shape)  # first job: first value of each parameter
    assert covering_array(shape) == rows  # deterministic
    if sum(n > 1 for n in shape) < 2:
        assert rows == list(itertools.product(*map(range, shape)))


def test_far_fewer_jobs_than_the_grid():
    assert len(covering_array((3, 3, 3, 3))) == 9  # grid: 81
    assert len(covering_array((2,) * 10)) <= 10  # grid: 1024
    assert len(covering_array((2, 3, 4, 5))) == 20  # grid: 120; 4 x 5 is the least possible


def test_deterministic_across_processes():
    code = ("from hydra_plugins.wtb_pairwise_sweeper.sweeper import covering_array; "
            "print(covering_array((3, 2, 4, 3, 2, 5)))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2")}
    assert len(outputs) == 1


def test_no_values_is_an_error():
    with pytest.raises(ValueError, match="position 1"):
        covering_array((2, 0, 3))


def split(overrides: list[str], max_batch_size: int | None = None) -> list[list[list[str]]]:
    parsed = OverridesParser.create().parse_overrides(overrides)
    return WtbPairwiseSweeper.split_arguments(parsed, max_batch_size)


def test_overrides_parsed_as_the_basic_sweeper_does():
    overrides = ["a=1,2,3", "b=range(3)", "c=choice(p,q,r)", "+d=u,v,w", "e=5", "a=x,y,z"]
    [jobs] = split(overrides)
    [grid] = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides(overrides), None)
    assert len(jobs) <= 12 and len(grid) == 81
    assert jobs == [job for job in grid if job in jobs]  # a sub-list of the grid, in its order
    assert jobs[0] == ["a=x", "b=0", "c=p", "+d=u", "e=5"]  # later `a` replaced the first
    values = [sorted({job[k] for job in grid}) for k in range(5)]
    rows = [tuple(values[k].index(job[k]) for k in range(5)) for job in jobs]
    assert uncovered(rows, (3, 3, 3, 3, 1)) == []


def test_batches():
    batches = split(["a=1,2,3", "b=1,2,3", "c=1,2,3"], max_batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 1]
    assert sum(batches, []) == split(["a=1,2,3", "b=1,2,3", "c=1,2,3"])[0]


def test_no_sweep_is_one_job():
    assert split([]) == [[[]]]
    assert split(["a=1", "b=2"]) == [[["a=1", "b=2"]]]


@pytest.mark.parametrize("overrides, message", [
    (["a=1,2", "b=range(0)"], "'b=range(0)': b has no values"),
    (["a=1,2", "b=interval(0,1)"], "'b=interval(0,1)': only lists of values"),
])
def test_bad_sweeps_name_the_culprit(overrides, message):
    # CompactHydraException, not PairwiseSweepError: Hydra's plugin scan, run by any in-process
    # Hydra test before this one, imports the plugin module a second time (a second class).
    with pytest.raises(CompactHydraException, match=message.replace("(", r"\(")
                       .replace(")", r"\)")) as info:
        split(overrides)
    assert type(info.value).__name__ == PairwiseSweepError.__name__


def test_bad_batch_size():
    with pytest.raises(CompactHydraException, match="max_batch_size"):
        split(["a=1,2"], max_batch_size=0)


def test_every_field_is_documented():
    text = (ROOT / "docs/config.md").read_text()
    section = text[text.index("## Pairwise sweeps: `hydra/sweeper=wtb_pairwise`"):]
    for f in fields(WtbPairwiseSweeperConf):
        if f.name != "_target_":
            assert f"| `{f.name}` |" in section, f"hydra.sweeper.{f.name} is not documented"


APP = '''
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    out.joinpath("job.txt").write_text(f"{cfg.a} {cfg.b} {cfg.c} {cfg.d} {cfg.e}")


if __name__ == "__main__":
    main()
'''


def test_a_plain_hydra_app(tmp_path):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "config.yaml").write_text("a: 0\nb: 0\nc: 0\nd: 0\ne: 0\n")
    proc = subprocess.run(
        [sys.executable, "app.py", "-m", "hydra/sweeper=wtb_pairwise", "hydra/launcher=basic",
         "hydra.sweep.dir=multirun", "a=1,2,3", "b=x,y,z", "c=p,q,r", "d=u,v,w", "e=const"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = [p.read_text().split() for p in sorted((tmp_path / "multirun").glob("*/job.txt"))]
    assert 9 <= len(jobs) <= 12  # the grid: 81
    assert "(the grid has 81)" in proc.stdout + proc.stderr
    assert all(job[4] == "const" for job in jobs)
    values = ["123", "xyz", "pqr", "uvw"]
    rows = [tuple(values[k].index(job[k]) for k in range(4)) for job in jobs]
    assert uncovered(rows, (3, 3, 3, 3)) == []
    job0 = (tmp_path / "multirun/0/job.txt").read_text()
    assert job0 == "1 x p u const"
