"""`python -m wtb_conf [-m] [overrides...]`: the Hydra entry point, nothing else."""

import atexit
import os
import sys

from wtb_conf.driver import interrupts

interrupts.install()  # before the imports below, which take a second or two
try:
    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig

    from wtb_conf.config.checks import long_override_key
    from wtb_conf.driver import callback as sweep
    from wtb_conf.job.task import run
except KeyboardInterrupt:  # Ctrl-C while Python still imports: nothing has started
    print("interrupted before the sweep started: nothing was recorded", file=sys.stderr,
          flush=True)
    # (not sys.exit: an interrupt inside an extension module's import makes Python end the
    # process by SIGINT on its way out whatever the exit code says)
    os._exit(1)

# `hydra/launcher=wtb` (the default): the wtb_ray launcher with wtb_conf's planner. Stored
# here rather than in conf/, so that replays, whose primary config is elsewhere, find it too.
ConfigStore.instance().store(
    group="hydra/launcher", name="wtb", provider="wtb_conf",
    node={"defaults": ["wtb_ray"],
          "planner": {"_target_": "wtb_conf.driver.planner.Planner", "venv_manager": None,
                      "venv_manager_token": None, "venv_data": "data/venv_manager",
                      # for its check at the sweep's start (shared_disk=false)
                      "storage": "${storage}"},
          "summary": False},  # the sweep callback prints the comparison
)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return run(cfg)


if __name__ == "__main__":
    if refused := long_override_key(sys.argv[1:]):  # before Hydra makes a file name of it
        sys.exit(refused)
    code = sweep.main(main)
    if interrupts.interrupted():
        # Python ends a process whose interrupt went through an extension module's code by
        # SIGINT, whatever the exit code: run the exit handlers (workers, a local Ray) here
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
