"""Run a stored run again through `python -m wtb_conf`: `wtb rerun RUN`, `wtb resume`,
`wtb rollback` (and `wtb rerun --failed SWEEP`), the commands and what they share.

The config is the resolved config the run recorded, not the conf/ files as they are now, so a
replay runs what the run ran. It goes through the normal entry point as a one-job sweep
(`-m`), so the run gets its env, the launcher and its store records like any sweep's job;
what the replay adds (`+fork.*`, `rerun=true`) are overrides, and show up as such on the run.

A replay's primary config lives in a temp dir only while it runs, so it is also committed to
the store, and a `replay` event under the sweep names that commit (with the replayed run, the
kind of replay and the directory it ran from): `wtb rerun --failed` restores it to run the
sweep's recorded command again. The sweep is the one the child reports through the file
named by $WTB_SWEEP_ID_FILE (written by the sweep callback), not the newest in the store,
which may be someone else's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import click

from wtb_conf.cli.options import overrides_argument, store_command
from wtb_conf.store import ObjectNotFound, Store, StoreError

PACKAGED = Path(__file__).parent.parent / "conf" / "config.yaml"
# The sweep callback (wtb_conf.driver.callback) writes its new sweep's id to the file this names.
REPLAY_EVENT = "replay"


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


class Replayed(NamedTuple):
    code: int  # the child's exit status
    sweep_id: str | None  # the sweep it reported; None: it stopped before opening one


def _launch_dir(path: str | None, what: str) -> str:
    if not path:
        raise StoreError(f"{what} was recorded by a wtb_conf that did not keep the launch "
                         "directory; run its command again with `python -m wtb_conf`")
    if not Path(path).is_dir():
        raise StoreError(f"{what} was launched from {path}, which is gone; replays run there "
                         "(its conf, code and input files)")
    return path


def replay(store: Store, run_id: str, overrides: Sequence[str],
           fork: dict[str, Any] | None = None, inputs: bool = False,
           kind: str = "rerun") -> Replayed:
    """Run `run_id`'s stored config as a one-job sweep with `overrides`. `inputs`: read the
    case input files as the run stored them, if they changed since; `kind`: the command
    (rerun, resume, rollback), recorded with the sweep."""
    from omegaconf import OmegaConf

    run = store.run(run_id)
    cwd = _launch_dir(run["launch_dir"], f"run {run_id[:8]}")
    cfg = primary_config(run["config_yaml"], fork)
    if inputs and run["inputs_commit"]:
        stored_inputs(store, run, cfg)
    with tempfile.TemporaryDirectory(prefix="wtb-replay-") as tmp:
        config_dir = Path(tmp, "config")
        config_dir.mkdir()
        OmegaConf.save(cfg, config_dir / "replay.yaml")
        record = {"replay": kind, "run": run_id, "cwd": cwd, "rerun_of": None,
                  "config_commit": store.commit_dir(config_dir, message="replay config")}
        print(f"wtb: replaying run {run_id[:8]} from its stored config in {cwd}: "
              f"{' '.join(overrides) or '(no overrides)'}", flush=True)
        argv = ["-m", "--config-path", str(config_dir), "--config-name", "replay", *overrides]
        return _launch(store, record, argv, Path(tmp))


def _launch(store: Store, record: dict[str, Any], argv: list[str], tmp: Path) -> Replayed:
    """`python -m wtb_conf ARGV` from record['cwd']; `record` is noted under the sweep it
    opens as soon as it reports it, so a replay whose `wtb` is killed still has it."""
    from wtb_conf.driver.callback import SWEEP_ID_FILE  # (Hydra's import cost: not every wtb's)

    id_file = tmp / "sweep-id"
    child = subprocess.Popen([sys.executable, "-m", "wtb_conf", *argv], cwd=record["cwd"],
                             env={**os.environ, SWEEP_ID_FILE: str(id_file)})
    code: int | None = None
    sweep_id: str | None = None
    interrupted = False
    while code is None:
        try:
            try:
                code = child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            sweep_id = sweep_id or _note(store, id_file, record)
        except KeyboardInterrupt:
            if interrupted:  # a second Ctrl-C: the user wants out now
                child.terminate()
                code = child.wait()
                break
            # Ctrl-C reached the child too (one process group): wait while it closes its
            # sweep, which records the interrupted job as failed, for `rerun --failed`.
            interrupted = True
            print("wtb: waiting for the replay to record where it stopped (Ctrl-C again: "
                  "stop it now)", file=sys.stderr, flush=True)
    return Replayed(code, sweep_id or _note(store, id_file, record))


def _note(store: Store, id_file: Path, record: dict[str, Any]) -> str | None:
    """The sweep id the child reported, once recorded with `record`; None: not yet."""
    try:
        sweep_id = id_file.read_text().strip()
    except FileNotFoundError:
        return None
    if len(sweep_id) != 32 or any(c not in "0123456789abcdef" for c in sweep_id):
        return None  # still being written
    try:
        store.sweep(sweep_id)
    except ObjectNotFound:
        print(f"wtb: sweep {sweep_id[:8]} went to another store (the run's storage config); "
              "its replay is not recorded here", file=sys.stderr, flush=True)
        return sweep_id
    # An event, as sweep_started is: the sweeps table's columns are the sweep callback's.
    store.log_event(REPLAY_EVENT, record, sweep_id=sweep_id)
    return sweep_id


def replay_of(store: Store, sweep_id: str) -> dict[str, Any] | None:
    """What the sweep replays (replay, run, config_commit, cwd, rerun_of), if it is a replay."""
    event = store.first_sweep_event(sweep_id, REPLAY_EVENT)
    return event["data"] if event else None


# -- the commands ----------------------------------------------------------------------


def _report(store: Store, replayed: Replayed) -> int:
    if replayed.sweep_id is None:
        print("wtb: the replay stopped before its sweep began (its errors are above)",
              file=sys.stderr)
        return replayed.code or 1
    # a job retried after its worker died has several runs: the newest counts
    runs = {r["job_num"]: r for r in store.runs(replayed.sweep_id)}.values()
    if not runs:
        print(f"wtb: sweep {replayed.sweep_id[:8]} recorded no runs", file=sys.stderr)
    for r in runs:
        print(f"wtb: run {r['run_id'][:8]} {r['status']}"
              + (f": {r['error']}" if r["error"] else "") + f" — `wtb show {r['run_id'][:8]}`")
    return replayed.code


def _replay(store: Store, run_id: str, overrides: list[str], kind: str,
            fork: dict[str, Any] | None = None, inputs: bool = False) -> int:
    return _report(store, replay(store, run_id, overrides, fork, inputs, kind))


def _with_checkpoints(store: Store, run_id: str) -> str:
    """A cache hit ran nothing: its checkpoints are those of the run it reused."""
    run = store.run(run_id)
    if run["status"] == "cached":
        raise StoreError(f"run {run_id[:8]} is a cache hit of run {run['cached_from'][:8]}, "
                         f"which holds the checkpoints: use {run['cached_from'][:8]}")
    return run_id


@store_command("resume", "continue a paused (or failed) run in a new run")
@click.argument("run")
@click.option("--set", "items", multiple=True, metavar="KEY=VALUE",
              help="change a state field before continuing (repeatable); VALUE is YAML")
@overrides_argument
def cmd_resume(store: Store, run: str, items: tuple[str, ...],
               overrides: tuple[str, ...]) -> int:
    """A new run that continues RUN from each case's newest checkpoint.

    RUN: run id, unique prefix, or 'last'. OVERRIDE...: more Hydra overrides for the new
    run, e.g. hydra/launcher=basic"""
    import yaml
    from omegaconf import OmegaConf

    from wtb_conf.config.values import id_override  # (Hydra's import cost: not every wtb's)

    run = store.run(store.resolve("runs", run))
    state = OmegaConf.select(OmegaConf.create(run["config_yaml"]), "workflow.state") or {}
    sets = {}
    for item in items:
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
    return _replay(store, run["run_id"], [id_override("fork.run", run["run_id"]), *overrides],
                   "resume", fork={"set": sets} if sets else {})


@store_command("rollback", "a new paused run with a run's state and files at one of its "
                           "checkpoints")
@click.argument("run")
@click.option("--checkpoint", required=True,
              help="checkpoint id (or unique prefix) of one of its cases")
@overrides_argument
def cmd_rollback(store: Store, run: str, checkpoint: str, overrides: tuple[str, ...]) -> int:
    """A new run, paused, whose state and files are RUN's at the checkpoint.

    RUN: run id, unique prefix, or 'last'. OVERRIDE...: more Hydra overrides for the new
    run, e.g. hydra/launcher=basic"""
    from wtb_conf.config.values import id_override

    run_id = _with_checkpoints(store, store.resolve("runs", run))
    cp = store.checkpoint(run_id, checkpoint)
    fork = [id_override("fork.run", run_id), f"+fork.checkpoint={cp['checkpoint_id']}",
            "+fork.pause=true"]
    return _replay(store, run_id, [*fork, *overrides], "rollback", fork={})


@store_command("rerun", "rerun one run from its stored config, or a sweep's failed and "
                        "interrupted jobs")
@click.argument("run", required=False)
@click.option("--failed", metavar="SWEEP",
              help="a sweep id (or prefix), or 'last': its command runs again, and the jobs "
                   "that completed are reported as cached")
@overrides_argument
def cmd_rerun(store: Store, run: str | None, failed: str | None,
              overrides: tuple[str, ...]) -> int:
    """`wtb rerun RUN`: one run again from its stored config, bypassing the job cache.
    `wtb rerun --failed SWEEP`: a sweep's command again; jobs that completed are cache hits.

    RUN: run id, unique prefix, or 'last'. OVERRIDE...: more Hydra overrides for the new
    run, e.g. hydra/launcher=basic"""
    from wtb_conf.job.admission import CONTINUES_ENV

    if (run is None) == (failed is None):
        raise StoreError("give one run to rerun (wtb rerun RUN) or one sweep to finish "
                         "(wtb rerun --failed SWEEP)")
    if run is not None:
        return _replay(store, store.resolve("runs", run), ["rerun=true", *overrides],
                       "rerun", inputs=True)
    if overrides:
        raise StoreError(f"--failed reruns the sweep's own command; extra overrides "
                         f"{' '.join(overrides)} would make it another sweep")
    sweep_id = store.resolve("sweeps", failed)
    sweep = store.sweep(sweep_id)
    record = replay_of(store, sweep_id)
    if record is not None:
        return _rerun_replay(store, sweep, record)
    argv = sweep["argv"]
    if _gone_replay_config(argv):
        raise StoreError(f"sweep {sweep_id[:8]} is a replay by an older wtb_conf, which kept its "
                         f"config only in {argv[argv.index('--config-path') + 1]} (gone): "
                         "replay its run again (wtb rerun / resume / rollback RUN)")
    missing = store.unfinished_jobs(sweep_id)
    print(f"rerunning sweep {sweep_id[:8]} ({missing} failed, interrupted or never started "
          f"jobs): python -m wtb_conf {' '.join(argv)}", flush=True)
    # the new sweep finishes this one: with rerun=true, what this one completed is still kept
    env = {**os.environ, CONTINUES_ENV: sweep_id}
    return subprocess.run([sys.executable, "-m", "wtb_conf", *argv], env=env).returncode


def _gone_replay_config(argv: list[str]) -> bool:
    try:
        path = argv[argv.index("--config-path") + 1]
        return argv[argv.index("--config-name") + 1] == "replay" and not Path(path).is_dir()
    except (ValueError, IndexError):
        return False


def _rerun_replay(store: Store, sweep: dict[str, Any], record: dict[str, Any]) -> int:
    """A replay sweep's recorded command again, from where it ran, with its primary config
    restored from the store; only when some of its jobs failed or never ended."""
    sweep_id = sweep["sweep_id"]
    what = f"sweep {sweep_id[:8]} ({record['replay']} of run {record['run'][:8]})"
    runs = list({r["job_num"]: r for r in store.runs(sweep_id)}.values())
    failed = [r for r in runs if r["status"] == "failed"]
    if runs and not failed:
        print(f"wtb: {what} has no failed or interrupted jobs: nothing to rerun")
        return 0
    argv = list(sweep["argv"])
    if len(failed) < len(runs) and "rerun=true" in argv:
        # `wtb rerun RUN a=1,2`: without rerun=true its completed jobs are cache hits
        # (rerun is not part of a job's identity) and only the others run again
        argv[argv.index("rerun=true")] = "rerun=false"
    cwd = _launch_dir(record["cwd"], what)
    with tempfile.TemporaryDirectory(prefix="wtb-replay-") as tmp:
        config_dir = Path(tmp, "config")
        store.restore(record["config_commit"], config_dir)
        argv[argv.index("--config-path") + 1] = str(config_dir)
        print(f"rerunning {what}, {len(failed)} failed or interrupted runs, in {cwd} with its "
              f"stored config: python -m wtb_conf {' '.join(argv)}", flush=True)
        return _report(store, _launch(store, {**record, "rerun_of": sweep_id}, argv, Path(tmp)))


COMMANDS = (cmd_rerun, cmd_resume, cmd_rollback)
