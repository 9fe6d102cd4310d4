"""The benchmark's Hydra app: job `i` burns `work` seconds of CPU, then sleeps `sleep` seconds
(a stand-in for waiting on an LLM call); both 0 or unset is a trivial job."""

import time

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=None)
def main(cfg: DictConfig) -> int:
    end = time.process_time() + cfg.get("work", 0)
    n = 0
    while time.process_time() < end:
        n += 1
    time.sleep(cfg.get("sleep", 0))
    return n


if __name__ == "__main__":
    main()
