"""Run a stored run again through `python -m wtb_conf`: `wtb rerun RUN`, `wtb resume`,
`wtb rollback`.

The config is the resolved config the run recorded, not the conf/ files as they are now, so a
replay runs what the run ran. It goes through the normal entry point as a one-job sweep
(`-m`), so the run gets its env, the launcher and its store records like any sweep's job;
what the replay adds (`+fork.*`, `rerun=true`) are overrides, and show up as such on the run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from wtb_conf.store import Store

PACKAGED = Path(__file__).parent / "conf" / "config.yaml"


def primary_config(config_yaml: str, drop_fork: bool) -> Any:
    """The stored config as a primary config, with the packaged config's Hydra settings."""
    cfg = OmegaConf.create(config_yaml)
    if drop_fork:
        cfg.pop("fork", None)
    packaged = OmegaConf.load(PACKAGED)
    cfg.defaults = [{"override hydra/launcher": "wtb_ray"}, "_self_"]
    cfg.hydra = packaged.hydra
    return cfg


def replay(store: Store, run_id: str, overrides: Sequence[str], drop_fork: bool) -> int:
    """Run `run_id`'s stored config as a one-job sweep with `overrides`; the exit status."""
    run = store.run(run_id)
    cwd = run["launch_dir"] or "."
    with tempfile.TemporaryDirectory(prefix="wtb-replay-") as tmp:
        OmegaConf.save(primary_config(run["config_yaml"], drop_fork), Path(tmp, "replay.yaml"))
        argv = [sys.executable, "-m", "wtb_conf", "-m", "--config-path", tmp,
                "--config-name", "replay", *overrides]
        print(f"wtb: replaying run {run_id[:8]} from its stored config in {cwd}: "
              f"{' '.join(overrides) or '(no overrides)'}", flush=True)
        return subprocess.run(argv, cwd=cwd).returncode
