"""The benchmark's Hydra app: job `i` burns `work` seconds of CPU (0 = a trivial job)."""

import time

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=None)
def main(cfg: DictConfig) -> int:
    end = time.process_time() + cfg.work
    n = 0
    while time.process_time() < end:
        n += 1
    return n


if __name__ == "__main__":
    main()
