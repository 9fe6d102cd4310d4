"""A bare Hydra app for the launcher's failure tests: `mode` picks what job `x` does."""

import os
import signal
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=None)
def main(cfg: DictConfig) -> int:
    x, mode = cfg.x, cfg.mode
    if mode == "barrier":  # wait until `parties` jobs have started: they run at once
        Path(cfg.marker).mkdir(exist_ok=True)
        Path(cfg.marker, str(x)).touch()
        while len(os.listdir(cfg.marker)) < cfg.parties:
            time.sleep(0.05)
    if x == cfg.get("bad", -1):
        if mode == "raise":
            raise ValueError(f"job x={x} raised on purpose")
        if mode == "kill_once" and not Path(cfg.marker).exists():
            Path(cfg.marker).write_text("died once")
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "exit":  # the job ends its own process: it would do so again
            os._exit(3)
        if mode == "sleep":
            time.sleep(60)
    Path(HydraConfig.get().runtime.output_dir, f"done-{x}").write_text(str(os.getpid()))
    return x * 10


if __name__ == "__main__":
    main()
