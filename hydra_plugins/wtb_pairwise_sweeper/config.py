"""`hydra/sweeper=wtb_pairwise`: every pair of swept values, in far fewer jobs than the grid.
See docs/config.md."""

# No `from __future__ import annotations`: OmegaConf reads these annotations as types, and
# Hydra imports this module outside sys.modules while scanning plugins.
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class WtbPairwiseSweeperConf:
    _target_: str = "hydra_plugins.wtb_pairwise_sweeper.sweeper.WtbPairwiseSweeper"
    # jobs handed to the launcher at a time; unset: all jobs in one batch
    max_batch_size: int | None = None
    # key -> sweep string ("a,b", "range(1,4)", "glob(*)"), as hydra/sweeper=basic's params
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="wtb_pairwise", node=WtbPairwiseSweeperConf, provider="wtb_conf"
)
