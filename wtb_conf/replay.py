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

from wtb_conf.store import Store, StoreError

PACKAGED = Path(__file__).parent / "conf" / "config.yaml"


def primary_config(config_yaml: str, fork: dict[str, Any] | None) -> Any:
    """The stored config as a primary config, with the packaged config's Hydra settings;
    `fork` (None: keep the stored one) replaces its `fork:`."""
    cfg = OmegaConf.create(config_yaml)
    if fork is not None:
        cfg.pop("fork", None)
        if fork:
            cfg.fork = fork
    packaged = OmegaConf.load(PACKAGED)
    cfg.defaults = [{"override hydra/launcher": "wtb_ray"}, "_self_"]
    cfg.hydra = packaged.hydra
    return cfg


def stored_inputs(store: Store, run: dict[str, Any], cfg: Any) -> None:
    """If input files the run's cases named changed since, restore the stored copies (under
    `.wtb/inputs/` of the launch dir) and point the cases at those; unchanged files are read
    where they are, as the run read them."""
    launch = Path(run["launch_dir"]).resolve()
    tree = store.tree(run["inputs_commit"])
    present = [rel for rel in tree if (launch / rel).is_file()]
    now = store.tree(store.commit_dir(launch, message="inputs", files=present))
    changed = {rel for rel, entry in tree.items()
               if rel not in now or now[rel].blob != entry.blob}
    if not changed:
        return
    dest = launch / ".wtb" / "inputs" / run["inputs_commit"][:16]
    if not dest.exists():
        store.restore(run["inputs_commit"], dest)
    print(f"wtb: {', '.join(sorted(changed))} changed since run {run['run_id'][:8]} ran; its "
          f"cases read the stored copies in {dest}", flush=True)

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, str) and "\n" not in value:
            path = (launch / value).resolve()
            if path.is_relative_to(launch) and path.relative_to(launch).as_posix() in changed:
                return str(dest / path.relative_to(launch))
        return value

    cases = OmegaConf.to_container(cfg.workflow.cases, resolve=True)
    cfg.workflow.cases = swap(cases)


def replay(store: Store, run_id: str, overrides: Sequence[str],
           fork: dict[str, Any] | None = None, inputs: bool = False) -> int:
    """Run `run_id`'s stored config as a one-job sweep with `overrides`; the exit status.
    `inputs`: read the case input files as the run stored them, if they changed since."""
    run = store.run(run_id)
    cwd = run["launch_dir"]
    if not cwd:
        raise StoreError(f"run {run_id[:8]} was recorded by a wtb_conf that did not keep the "
                         "launch directory; run its command again with `python -m wtb_conf`")
    if not Path(cwd).is_dir():
        raise StoreError(f"run {run_id[:8]} was launched from {cwd}, which is gone; replays "
                         "run there (its conf, code and input files)")
    cfg = primary_config(run["config_yaml"], fork)
    if inputs and run["inputs_commit"]:
        stored_inputs(store, run, cfg)
    with tempfile.TemporaryDirectory(prefix="wtb-replay-") as tmp:
        OmegaConf.save(cfg, Path(tmp, "replay.yaml"))
        argv = [sys.executable, "-m", "wtb_conf", "-m", "--config-path", tmp,
                "--config-name", "replay", *overrides]
        print(f"wtb: replaying run {run_id[:8]} from its stored config in {cwd}: "
              f"{' '.join(overrides) or '(no overrides)'}", flush=True)
        return subprocess.run(argv, cwd=cwd).returncode
