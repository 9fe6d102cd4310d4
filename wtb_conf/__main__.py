"""`python -m wtb_conf [-m] [overrides...]`: the Hydra entry point, nothing else."""

import sys

import hydra
from omegaconf import DictConfig

from wtb_conf import sweep
from wtb_conf.job import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return run(cfg)


if __name__ == "__main__":
    try:
        main()
    finally:
        sweep.close_open_sweep()  # when Hydra stopped before its on_multirun_end
    sys.exit(sweep.exit_status)  # non-zero when any job of the sweep failed
