"""The Hydra callback that brackets a sweep: opens its record, prints its table, sets the exit.

Registered in the packaged config.yaml under `hydra.callbacks.wtb`. It runs in the driver,
whatever launcher runs the jobs, and learns how the jobs went from the store.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from wtb_conf.config.checks import clip_message, top_level_problems
from wtb_conf.config.models import GROUPS, check_config
from wtb_conf.config.values import ConfigError
from wtb_conf.driver import interrupts, preflight
from wtb_conf.job import admission, checkpointer
from wtb_conf.job.admission import CONTINUES_ENV, SWEEP_ENV, storage_of
from wtb_conf.job.fork import ForkError
from wtb_conf.job.workflow import WorkflowError
from wtb_conf.results import gates, table
from wtb_conf.store import StoreError, store_at
from wtb_conf.store.files import check_room
from wtb_conf.store.lifecycle import DONE

log = logging.getLogger(__name__)

# set by `wtb rerun` (wtb_conf.cli.replay): the file this sweep writes its id to, for that
# `wtb` to wait on
SWEEP_ID_FILE = "WTB_SWEEP_ID_FILE"

# Hydra turns exceptions raised by callbacks into warnings, so the callback leaves the exit
# status here and `python -m wtb_conf` exits with it once Hydra returns.
exit_status = 0
# The sweep still open, if Hydra stopped before calling on_*_end (a job's exception re-raised
# by the sweeper, Ctrl-C): `python -m wtb_conf` closes it on the way out.
_open: tuple[SweepCallback, DictConfig] | None = None
_ended: str | None = None  # the sweep this process recorded the end of


def close_open_sweep(error: BaseException | None = None) -> None:
    """`error`: what ended the sweep early (Hydra reports a job's or the launcher's exception
    and exits 1: the exception is the context of that SystemExit)."""
    if _open is not None:
        callback, config = _open
        callback._end(config, _cause(error), interrupted=isinstance(error, KeyboardInterrupt))


def _cause(error: BaseException | None) -> str | None:
    if isinstance(error, SystemExit):
        if error.code in (0, None):
            return None
        error = error.__context__ or error
    if error is None:
        return None
    return f"{type(error).__name__}: {error}".rstrip(": ")


def main(entry: Callable[[], Any]) -> int:
    """`python -m wtb_conf`: Hydra's `entry`, then the exit status. Ctrl-C (or SIGTERM)
    anywhere ends the sweep the same way: the launcher has stopped its workers by the time
    it gets here, the sweep is recorded with what finished, and one line says so."""
    interrupts.install()  # (python -m wtb_conf did before its imports; again for others)
    try:
        entry()
    except BaseException as e:
        interrupts.taken()
        if isinstance(e, BrokenPipeError):  # `--help | head`: the reader left, so do we
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        elif isinstance(e, KeyboardInterrupt) or interrupts.interrupted():
            # (what the interrupt broke may have raised another error in its place)
            _end_interrupted(KeyboardInterrupt(interrupts.signalled))
        else:  # when Hydra stopped before its on_multirun_end: record why
            close_open_sweep(e)
            raise
        close_open_sweep(e)
        return 1
    # The sweep is recorded: a Ctrl-C from here on (closing workers, stopping a local Ray,
    # both bounded) would only turn the exit into a death by SIGINT
    interrupts.ignore()
    return exit_status  # non-zero when any job of the sweep failed


def _end_interrupted(error: KeyboardInterrupt) -> None:
    interrupts.ignore()  # a second Ctrl-C must not leave the sweep's record half-written
    if _ended is not None:  # in its summary, or on the way out
        print(f"interrupted: sweep {_ended[:8]} had ended and is recorded whole; "
              f"`wtb compare {_ended[:8]}` shows it", file=sys.stderr)
    elif _open is None:
        print("interrupted before the sweep started: nothing was recorded", file=sys.stderr)
    close_open_sweep(error)


def expect_jobs(n: int) -> None:
    """The launcher's planner was handed `n` more jobs of the open sweep: what an interrupted
    sweep counts its jobs against (a job that never started has no run)."""
    if _open is not None:
        _open[0].jobs += n


# The lock on each sweep dir this process claimed: held until it exits (the kernel lets go
# of a dead process's flock, so a crashed sweep's dir is free again).
_claims: list[int] = []
SWEEP_LOCK = ".wtb-sweep.lock"
WTB_LAUNCHER = "hydra_plugins.wtb_conf_launcher.launcher.WtbRayLauncher"


def _quoted(path: Path) -> str:
    """`path` as a quoted value in Hydra's override grammar: there a backslash escapes only
    a quote or the closing quote, so only those backslashes are doubled."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""),
                        str(path)) + "'"


def claim_sweep_dir(config: DictConfig) -> Path:
    """`hydra.sweep.dir`, made this sweep's own: Hydra names it by the second, so two sweeps
    started in the same second (or given one fixed dir) would write into the same job dirs.
    A sweep holds an flock on `<dir>/.wtb-sweep.lock` while it runs; if another live sweep
    holds it, this one takes `<dir>-1`, `<dir>-2`, ... instead, set as a Hydra override so
    that every job's config, composed later, says the same. A dir whose sweep has ended is
    used again, as Hydra would."""
    base = Path(str(config.hydra.sweep.dir)).absolute()
    path, n = base, 0
    while True:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / SWEEP_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            n += 1
            path = base.with_name(f"{base.name}-{n}")
            continue
        _claims.append(fd)
        break
    if path != base:
        log.info("%s is another running sweep's; this sweep writes to %s", base, path)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(path)
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={_quoted(path)}")
    return path


# Sweepers whose jobs differ from the primary config only by their `params` and the command
# line's sweep overrides (any other may change any key)
KNOWN_SWEEPERS = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                  "hydra_plugins.wtb_pairwise_sweeper.sweeper.WtbPairwiseSweeper")


def swept_groups(config: DictConfig) -> set[str]:
    """The top-level keys of `config` (the primary config) that a sweep's jobs may have
    otherwise: those its sweep overrides and `hydra.sweeper.params` name; `*`: any."""
    if OmegaConf.select(config, "hydra.sweeper._target_") not in KNOWN_SWEEPERS:
        return {"*"}
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    try:
        parser = OverridesParser.create()
        overrides = [o for o in parser.parse_overrides(list(config.hydra.overrides.task))
                     if o.is_sweep_override()]  # the others are in the primary config already
        # every param, a single value too: the sweeper applies them to the jobs only
        overrides += parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    except Exception:  # the sweeper will say what is wrong with them
        return {"*"}
    swept = set()
    for override in overrides:
        top = override.key_or_group.split(".")[0]
        if top == "variant":  # `# @package workflow`
            swept.add("workflow")
        else:  # a key of the config, or a group that may set anything (+experiment=a,b)
            swept.add(top if top in config or top in GROUPS else "*")
    return swept


def check_launcher(config: DictConfig) -> None:
    """Settings wtb_conf's launcher would refuse once it starts, after the sweep is recorded
    (Hydra makes the launcher after the callbacks' on_multirun_start)."""
    launcher = OmegaConf.select(config, "hydra.launcher", default=None)
    if launcher is not None and launcher.get("_target_") == WTB_LAUNCHER:
        from hydra_plugins.wtb_conf_launcher import settings

        settings.check(OmegaConf.to_container(launcher, resolve=True))


def check_primary(config: DictConfig, swept: set[str]) -> None:
    """Refuse, before the sweep starts, what would fail in every job: each group's values
    (whole, unless a sweep may change the group), and when nothing swept can change the
    workflow, what the jobs check before they run (imports, compare.objective)."""
    whole = {"storage"} | ({g for g in GROUPS if g not in swept} if "*" not in swept else set())
    check_config(config, whole)
    if problems := top_level_problems(config.keys()):  # no sweep adds a top-level key
        raise ConfigError("\n".join(problems))
    if "workflow" not in config or not {"workflow", "env", "compare", "fork"} <= whole:
        return
    # (what fork.* names in the store: a job's recorded failure)
    checked = admission.job_config(config, Path.cwd())
    if not admission.wants_env(checked.env):  # its targets import in its env's interpreter
        admission.check_imports(checked)


class ConfigRefused(SystemExit):
    """A config refused when the sweep starts. It carries the CompactHydraException (or store
    error) that names the key, as a SystemExit: Hydra turns a callback's Exception into a
    warning and would run the jobs anyway; a SystemExit gets past it, and Python prints its
    message alone (no traceback) and exits 1."""

    def __init__(self, error: Exception) -> None:
        super().__init__(clip_message(str(error)))  # a 100 KB value is not echoed whole
        self.error = error


def _continue(store: Any, sweep_id: str) -> None:
    """This sweep finishes what the same command began in sweeps that ended early (and
    `wtb rerun --failed SWEEP` names SWEEP): with rerun=true, their completed runs are still
    cache hits (admission.cache_hit); without it, any completed run is."""
    named = [s for s in os.environ.get(CONTINUES_ENV, "").split(",") if s]
    chain = dict.fromkeys(named + store.ended_early(sys.argv[1:], sweep_id))
    if chain:
        os.environ[CONTINUES_ENV] = ",".join(chain)
    else:
        os.environ.pop(CONTINUES_ENV, None)


def _unfinished(run: dict[str, Any]) -> bool:
    """A run the sweep's end cut short (or that was running when it did)."""
    return run["status"] == "running" or (
        run["status"] == "failed" and str(run["error"] or "").startswith("interrupted"))


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.sweep_id: str | None = None
        self.jobs = 0  # handed to the launcher's planner so far (expect_jobs)
        self.expected = 0  # the sweep's jobs, as its start check counted them (0: not known)

    def _start(self, config: DictConfig, multirun: bool) -> None:
        try:  # before anything is written: a refused sweep leaves the store as it was
            if multirun:  # a single run (no -m) uses no launcher
                check_launcher(config)
            elif "workflow" not in config:  # (a sweep may choose it: its jobs are checked)
                raise ConfigError(preflight.missing_workflow())
            check_primary(config, swept_groups(config) if multirun else set())
        except (CompactHydraException, WorkflowError, ForkError, StoreError) as e:
            raise ConfigRefused(e) from None
        except Exception as e:  # `${hydra:...}` resolves only in a job: the jobs check it
            log.debug("config not checked at the sweep's start: %s: %s", type(e).__name__, e)
        if multirun:  # every job's own config, composed as the launcher will compose it
            try:
                self.expected = preflight.check_jobs(config, KNOWN_SWEEPERS, Path.cwd()) or 0
            except (CompactHydraException, WorkflowError, ForkError, StoreError) as e:
                raise ConfigRefused(e) from None
            except Exception as e:  # a fault of the check's own: the jobs check themselves
                log.warning("jobs not checked at the sweep's start: %s: %s",
                            type(e).__name__, e)
        try:  # (a connection that may wait for its timeout: not with interrupts held)
            storage = storage_of(config, Path.cwd())
            checkpointer.check_reachable(storage.checkpoints)
        except StoreError as e:
            raise ConfigRefused(e) from None
        # Ctrl-C waits while the store is made, the sweep recorded and claimed: an empty
        # database file or a sweep row nobody closes is what it left otherwise
        with interrupts.held():
            try:  # before the store is made or migrated and the sweep dir claimed: a refused
                # sweep leaves nothing behind
                # where the sweep writes on this machine: the launch dir, and the store's
                # database and blob root when they are files here
                check_room([os.getcwd(), *storage.local_dirs()])
                store = store_at(storage)
            except StoreError as e:  # a db_url SQLAlchemy cannot open, a dir blocked by a file
                # (or a disk with no room for it)
                raise ConfigRefused(e) from None
            sweep_dir = str(claim_sweep_dir(config)) if multirun else None
            with store:
                self.sweep_id = store.create_sweep(sys.argv[1:], sweep_dir)
                global _open
                _open = (self, config)  # from here on, however it ends, the sweep is closed
                try:  # what earlier sweeps left running when they died; never this one's end
                    reaped = store.reap()
                except Exception as e:
                    log.warning("runs left by dead sweeps not checked: %s: %s", type(e).__name__, e)
                else:
                    if reaped["runs"] or reaped["sweeps"]:
                        log.warning("recorded as failed: %d runs and %d sweeps whose processes "
                                    "had died (`wtb runs` lists them)", len(reaped["runs"]),
                                    len(reaped["sweeps"]))
                _continue(store, self.sweep_id)
            if id_file := os.environ.pop(SWEEP_ID_FILE, None):  # a replay's `wtb` waits for it
                Path(id_file).write_text(self.sweep_id)
            os.environ[SWEEP_ENV] = self.sweep_id

    def _end(self, config: DictConfig, error: str | None = None,
             interrupted: bool = False) -> None:
        global exit_status, _open
        os.environ.pop(SWEEP_ENV, None)
        os.environ.pop(CONTINUES_ENV, None)
        if self.sweep_id is None:
            _open = None
            return
        with interrupts.held(), store_at(storage_of(config, Path.cwd())) as store:
            jobs = max(self.jobs, self.expected)
            status = store.finish_sweep(self.sweep_id, error, jobs=jobs)
            _open = None  # only now: an interrupt before this still gets the sweep closed
            global _ended
            _ended = self.sweep_id
            # a job retried after its actor died has several runs: the last one counts
            runs = list({r["job_num"]: r for r in store.runs(self.sweep_id)}.values())
            if not interrupted:  # wtb compare's table, with the experiment's baseline and gates
                judged = gates.judged(store, [self.sweep_id])
        short = self.sweep_id[:8]
        if status == "failed":
            exit_status = 1
        if interrupted:
            done = sum(not _unfinished(r) for r in runs)
            print(f"interrupted: {done} of {max(jobs, len(runs))} jobs done; run the same "
                  f"command (or `wtb rerun --failed {short}`) to finish", file=sys.stderr)
            return
        # wtb compare's table; its lines on failed jobs follow on stderr, below
        table.print_rows(judged.rows, f"sweep {short} — `wtb compare {short}`", judged.note,
                         failures=False)
        if judged.gates:
            print("\n".join(gates.lines(judged.gates)))
        done = sum(r["status"] in DONE for r in runs)
        cached = sum(r["status"] == "cached" for r in runs)
        paused = sum(r["status"] == "paused" for r in runs)
        print(f"sweep {short}: {done} of {max(jobs, len(runs))} jobs completed"
              + (f" ({cached} cached)" if cached else "")
              + (f", {paused} paused (`wtb resume RUN` continues)" if paused else "")
              + f"; `wtb report {short}` writes an HTML report")
        failed = [r for r in runs if r["status"] == "failed"]
        if failed:  # wtb compare's failure lines: each failed case, its node and error
            lines = table.job_failure_lines([r for r in judged.rows if r["status"] == "failed"])
            print(f"{len(failed)} of {len(runs)} jobs failed:", *(f"  {line}" for line in lines),
                  sep="\n", file=sys.stderr)
            exit_status = 1
        if len(runs) < jobs:  # the store could not take their failure (the log says why)
            print(f"{jobs - len(runs)} of {jobs} jobs have no run record: they failed before "
                  "one could be written (see the errors above)", file=sys.stderr)
            exit_status = 1
        if error:
            print(f"sweep {short} ended early: {error}", file=sys.stderr)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, multirun=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end(config)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, multirun=False)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end(config)
