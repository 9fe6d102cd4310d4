"""Run a stored run again through `python -m wtb_conf`: `wtb rerun RUN`, `wtb resume`,
`wtb rollback` (and `wtb rerun --failed SWEEP`), the commands and what they share.

The config is the resolved config the run recorded, not the conf/ files as they are now, so a
replay runs what the run ran. It goes through the normal entry point as a one-job sweep
(`-m`), so the run gets its env, the launcher and its store records like any sweep's job;
what the replay adds (`+fork.*`, `rerun=true`) are overrides, and show up as such on the run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wtb_conf.store import Store, StoreError

PACKAGED = Path(__file__).parent / "conf" / "config.yaml"


def primary_config(config_yaml: str, fork: dict[str, Any] | None) -> Any:
    """The stored config as a primary config, with the packaged config's Hydra settings;
    `fork` (None: keep the stored one) replaces its `fork:`."""
    from omegaconf import OmegaConf  # (here, not at the top: `wtb compare` stays fast)

    cfg = OmegaConf.create(config_yaml)
    if fork is not None:
        cfg.pop("fork", None)
        if fork:
            cfg.fork = fork
    packaged = OmegaConf.load(PACKAGED)
    cfg.defaults = [{"override hydra/launcher": "wtb"}, "_self_"]
    cfg.hydra = packaged.hydra
    return cfg


def stored_inputs(store: Store, run: dict[str, Any], cfg: Any) -> None:
    """If input files the run's cases named changed since, restore the stored copies (under
    `.wtb/inputs/` of the launch dir) and point the cases at those; unchanged files are read
    where they are, as the run read them."""
    from omegaconf import OmegaConf

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
    from omegaconf import OmegaConf

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


# -- the commands ----------------------------------------------------------------------


def _report(store: Store, before: set[str], code: int) -> int:
    new = [r for r in store.runs() if r["run_id"] not in before]
    for r in new:
        print(f"wtb: run {r['run_id'][:8]} {r['status']}"
              + (f": {r['error']}" if r["error"] else "") + f" — `wtb show {r['run_id'][:8]}`")
    return code


def _replay(store: Store, run_id: str, overrides: list[str],
            fork: dict[str, Any] | None = None, inputs: bool = False) -> int:
    before = {r["run_id"] for r in store.runs()}
    return _report(store, before, replay(store, run_id, overrides, fork, inputs))


def _with_checkpoints(store: Store, run_id: str) -> str:
    """A cache hit ran nothing: its checkpoints are those of the run it reused."""
    run = store.run(run_id)
    if run["status"] == "cached":
        raise StoreError(f"run {run_id[:8]} is a cache hit of run {run['cached_from'][:8]}, "
                         f"which holds the checkpoints: use {run['cached_from'][:8]}")
    return run_id


def cmd_resume(store: Store, args: argparse.Namespace) -> int:
    """A new run that continues RUN from each case's newest checkpoint."""
    import yaml
    from omegaconf import OmegaConf

    run = store.run(store.resolve("runs", args.run))
    state = OmegaConf.select(OmegaConf.create(run["config_yaml"]), "workflow.state") or {}
    sets = {}
    for item in args.set or []:
        key, eq, value = item.partition("=")
        if not eq or (state and key not in state):
            raise StoreError(f"--set {item!r}: expected KEY=VALUE with KEY one of the state "
                             f"fields {', '.join(state)}")
        try:
            sets[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise StoreError(f"--set {item!r}: VALUE is not YAML: {e}") from None
    if run["status"] not in ("paused", "failed"):
        raise StoreError(
            f"run {run['run_id'][:8]} is {run['status']}: only paused and failed runs resume; "
            f"to go back to one of its checkpoints, `wtb rollback {run['run_id'][:8]} "
            "--checkpoint CP`"
        )
    # --set values go in the replayed config, not on Hydra's command line, where a comma
    # would make a sweep of them.
    return _replay(store, run["run_id"], [f"+fork.run={run['run_id']}", *args.overrides],
                   fork={"set": sets} if sets else {})


def cmd_rollback(store: Store, args: argparse.Namespace) -> int:
    """A new run, paused, whose state and files are RUN's at the checkpoint."""
    run_id = _with_checkpoints(store, store.resolve("runs", args.run))
    cp = store.checkpoint(run_id, args.checkpoint)
    fork = [f"+fork.run={run_id}", f"+fork.checkpoint={cp['checkpoint_id']}", "+fork.pause=true"]
    return _replay(store, run_id, [*fork, *args.overrides], fork={})


def cmd_rerun(store: Store, args: argparse.Namespace) -> int:
    """`wtb rerun RUN`: one run again from its stored config, bypassing the job cache.
    `wtb rerun --failed SWEEP`: a sweep's command again; jobs that completed are cache hits."""
    if (args.run is None) == (args.failed is None):
        raise StoreError("give one run to rerun (wtb rerun RUN) or one sweep to finish "
                         "(wtb rerun --failed SWEEP)")
    if args.run is not None:
        return _replay(store, store.resolve("runs", args.run), ["rerun=true", *args.overrides],
                       inputs=True)
    if args.overrides:
        raise StoreError(f"--failed reruns the sweep's own command; extra overrides "
                         f"{' '.join(args.overrides)} would make it another sweep")
    sweep_id = store.resolve("sweeps", args.failed)
    argv = store.sweep(sweep_id)["argv"]
    failed = [r for r in store.runs(sweep_id) if r["status"] == "failed"]
    print(f"rerunning sweep {sweep_id[:8]} ({len(failed)} failed or interrupted runs): "
          f"python -m wtb_conf {' '.join(argv)}", flush=True)
    return subprocess.run([sys.executable, "-m", "wtb_conf", *argv]).returncode
