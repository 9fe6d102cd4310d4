"""wtb_conf's planner for the wtb_ray launcher (`hydra.launcher.planner`, set by the packaged
`hydra/launcher=wtb`): it sees every job's composed config before any job runs, and says

- which jobs are done already: cache hits (recorded with their evaluation, as the job would
  record them) and, for jobs in the driver's interpreter, configs that cannot run (recorded
  failed, with the error the job would raise); no worker is started for them, and a batch of
  cache hits never starts Ray;
- which interpreter a job needs: a venv_manager env when its `env` asks for packages or a
  Python version, provisioned once per distinct env, in parallel;
- which job waits for which: jobs whose first step is the same wait for the first of them,
  so that they can fork from its checkpoints (shared prefixes, docs/config.md).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from hydra_plugins.wtb_conf_launcher.plan import Job, NodeEnv, Plan
from wtb_conf.driver.envs import bench_path, connect, provide_on_node, spec_for
from wtb_conf.job import admission
from wtb_conf.job.admission import Admission, JobConfig
from wtb_conf.job.fork import first_step_key
from wtb_conf.job.workflow import BREAKPOINTS
from wtb_conf.storage import StorageSpec, is_postgres
from wtb_conf.store import Store, store_at

log = logging.getLogger(__name__)

STORAGE_ENV = ("WTB_DB_URL", "WTB_CHECKPOINTS", "WTB_BLOB_ROOT")  # conf/storage/postgres.yaml


@contextlib.contextmanager
def _bench_path() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="wtb-bench-path-"))
    try:
        yield str(bench_path(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


class JobEnv(NamedTuple):
    env_id: str
    python: str
    bench_path: str  # on the env's path: wtb_conf and its plugins, linked
    lock: list[str]  # the env's installed distributions, as its job will read them


def _task_config(config: DictConfig) -> DictConfig:
    """The config the task function gets: the job's without its `hydra` node (as run_job)."""
    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


@contextlib.contextmanager
def _as_job(job: Job) -> Iterator[None]:
    """HydraConfig set to the job's, for ${hydra:...} in its config, then set back."""
    hydra_cfg = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job.config)
    try:
        yield
    finally:
        if hydra_cfg is not None:
            HydraConfig.instance().set_config(hydra_cfg)


def _checked(cfg: DictConfig) -> JobConfig | Exception:
    """The job's config checked (importing nothing), or the error that check raised: the job's
    recorded failure."""
    try:
        return admission.job_config(cfg)
    except Exception as e:
        return e


def _storage(cfg: DictConfig, job: Job) -> StorageSpec | None:
    try:
        return admission.storage_of(cfg, Path(job.config.hydra.runtime.cwd))
    except Exception:  # the job reports it
        return None


def _forwarded(job: Job) -> dict[str, str]:
    """The environment a job's worker gets, for a job that admits itself there (a planner's
    admission hands these over as values). storage=postgres resolves WTB_DB_URL & co. in each
    job: a job on another node must find the store the sweep's start checked (the
    driver's), not its node's or the default."""
    out = {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}
    for key in (admission.SWEEP_ENV, admission.CONTINUES_ENV):
        if os.environ.get(key):
            out[key] = os.environ[key]
    out[admission.LAUNCH_DIR_ENV] = str(job.config.hydra.runtime.cwd)
    return out


def _settle_admitted(store: Store, admitted: Admission, plan: Plan) -> None:
    if admitted.config is None:  # the job would fail the same way in its worker
        run_id = admission.record_start(store, admitted)
        plan.done, plan.where = True, "planner"
        plan.result = admission.record_failure(store, run_id, admitted.error)
        return
    try:
        hit = admission.cache_hit(store, admitted)
    except Exception as e:  # e.g. the store is busy: the job looks again in its worker
        log.warning("planner: job #%s is left to run: %s: %s", admitted.num,
                    type(e).__name__, e)
        hit = None
    if hit is not None:
        run_id = admission.record_start(store, admitted)
        plan.done, plan.where = True, "cache"
        plan.result = admission.record_cached(store, run_id, *hit)
        return
    if not plan.python:  # its targets import here (in an env's interpreter: only there)
        try:
            admission.check_imports(admitted.config)
        except Exception as e:  # the job would fail the same way in its worker
            run_id = admission.record_start(store, admitted)
            plan.done, plan.where = True, "planner"
            plan.result = admission.record_failure(store, run_id, e)
            return
    plan.handoff = admitted


def _order(configs: list[JobConfig | Exception], plans: list[Plan]) -> None:
    """Jobs whose first step is the same wait for the first of them (shared prefixes)."""
    first: dict[str, int] = {}
    for i, config in enumerate(configs):
        if plans[i].done or not isinstance(config, JobConfig) or not config.share_prefixes \
                or config.rerun or config.fork is not None \
                or any(getattr(config.workflow, k) for k in BREAKPOINTS):
            continue  # jobs that never share
        try:
            key = first_step_key(config.data, config.env)
        except Exception:  # the job reports its own config errors when it runs
            continue
        if key in first:
            plans[i].waits_for = first[key]
        else:
            first[key] = i


class Planner:
    """Made once per sweep from `hydra.launcher.planner`; the keyword arguments are that
    node's other fields (docs/launcher.md)."""

    def __init__(self, venv_manager: str | None = None, venv_manager_token: str | None = None,
                 venv_data: str = "data/venv_manager", storage: Any = None) -> None:
        self.venv_manager = venv_manager
        self.venv_manager_token = venv_manager_token
        self.venv_data = venv_data
        # (`${storage}`, for check() at the sweep's start; each job's own is in its config)

    @staticmethod
    def check(params: dict[str, Any]) -> None:
        """At the sweep's start when jobs run on nodes that do not share the driver's disk
        (hydra.launcher.shared_disk=false): every node must reach the store."""
        storage = (params.get("planner") or {}).get("storage")
        if storage is not None:
            check_shared_storage(storage)

    @contextlib.contextmanager
    def __call__(self, jobs: list[Job]) -> Iterator[list[Plan]]:
        from wtb_conf.driver import callback  # (it imports the CLI's)

        callback.expect_jobs(len(jobs))
        cfgs = [_task_config(j.config) for j in jobs]
        configs = [_checked(cfg) for cfg in cfgs]  # each job's config, checked once
        plans = [Plan(env_vars=_forwarded(j)) for j in jobs]
        with contextlib.ExitStack() as stack:
            envs = self._envs(stack, jobs, cfgs, configs)
            for i, job in enumerate(jobs):
                env = envs[i]
                if env is not None:
                    plans[i].where = f"ray, env {job.config.hydra.runtime.choices.get('env')}"
                if isinstance(env, NodeEnv):  # its lock is known on its node: the job admits
                    plans[i].node_env = env   # itself there
                    plans[i].on_failure = functools.partial(self._failed, job, cfgs[i], None,
                                                            plans[i])
                    continue
                if env is not None:
                    plans[i].python, plans[i].python_path = env.python, [env.bench_path]
                    plans[i].env_vars[admission.ENV_ID] = env.env_id
                self._settle(job, cfgs[i], configs[i], plans[i], env)
                if not plans[i].done:
                    plans[i].on_failure = functools.partial(self._failed, job, cfgs[i], env,
                                                            plans[i])
            _order(configs, plans)
            yield plans

    def _settle(self, job: Job, cfg: DictConfig, config: JobConfig | Exception, plan: Plan,
                env: JobEnv | None) -> None:
        """Admit the job, and record it now if it needs no worker: a cache hit, or a config
        that cannot run. Otherwise its admission goes to the job with its plan."""
        with _as_job(job):
            try:
                admitted, store = admission.admit(
                    cfg, job.config.hydra, env and env.lock, env and env.env_id,
                    env.python if env else sys.executable, config)
            except Exception as e:  # the job meets it again and records it: not the planner's
                log.warning("planner: job #%s is left to run: %s: %s", job.num,
                            type(e).__name__, e)
                return
            with store:
                _settle_admitted(store, admitted, plan)

    @staticmethod
    def _failed(job: Job, cfg: DictConfig, env: JobEnv | None, plan: Plan,
                error: BaseException, retrying: bool, since: float) -> None:
        """The launcher's word on a job that failed where it could not record it (it timed
        out, its worker died, it never started, it raised before recording a run): on the
        run of that attempt, if the job got to record one, else as a failed run of its own."""
        cause = f"{type(error).__name__}: {error}"
        tb = "".join(traceback.format_exception(error))  # (a dead actor's: Ray's report)
        with _as_job(job):
            try:
                if isinstance(plan.handoff, Admission):
                    admitted, store = plan.handoff, store_at(plan.handoff.storage)
                else:
                    admitted, store = admission.admit(
                        cfg, job.config.hydra, env and env.lock, env and env.env_id,
                        env.python if env else sys.executable)
            except Exception as e:  # what failed the job fails here too: record it bare
                log.warning("planner: job #%s: %s: %s", job.num, type(e).__name__, e)
                admission.record_unopened(cfg, job.config.hydra, cause)
                return
            with store:
                # the attempt's runs started after `since`, by the clock of their start times
                begun = datetime.fromtimestamp(since + store.clock_offset(), UTC).isoformat(
                    timespec="microseconds")
                attempt = [r for r in store.runs(admitted.sweep_id)
                           if r["job_num"] == job.num and r["started_at"] >= begun]
                if attempt:  # a run that ended on its own knew more than the launcher does
                    for run in attempt:
                        store.fail_run(run["run_id"], cause + ("; retried" if retrying else ""),
                                       tb)
                    return
                if retrying:  # died before it began: the next attempt records the job
                    return
                run_id = admission.record_start(store, admitted)
                store.finish_run(run_id, "failed", None, {}, cause)

    def _envs(self, stack: contextlib.ExitStack, jobs: list[Job], cfgs: list[DictConfig],
              configs: list[JobConfig | Exception]) -> list[JobEnv | NodeEnv | None]:
        """Per job: its env, or None for the driver's interpreter. On a cluster joined by
        address, an env is made on the node each job lands on (NodeEnv), unless
        `venv_manager` names a manager (whose paths must then be valid on every node)."""
        specs: list[bytes | None] = []
        distinct: dict[bytes, tuple[Any, str]] = {}  # spec -> (spec, the first job wanting it)
        for job, cfg, config in zip(jobs, cfgs, configs, strict=True):
            env_cfg = (config.env if isinstance(config, JobConfig)
                       else admission.plain(cfg.get("env")))
            env_cfg = env_cfg or {}
            if not admission.wants_env(env_cfg):
                specs.append(None)
                continue
            choices = job.config.hydra.runtime.choices
            labels = {k: choices[k] for k in ("workflow", "variant", "env") if choices.get(k)}
            name = f"job #{job.num} ({' '.join(job.overrides)})"
            spec = spec_for(env_cfg, labels, name, _storage(cfg, job))
            key = spec.SerializeToString(deterministic=True)
            distinct.setdefault(key, (spec, name))
            specs.append(key)
        if not distinct:
            return [None] * len(jobs)
        launcher = jobs[0].config.hydra.launcher
        if not self.venv_manager and (launcher.get("address") or os.environ.get("RAY_ADDRESS")):
            # the key: the spec's digest (labels aside: they do not change the env)
            node_envs = {}
            for key, (spec, name) in distinct.items():
                bare = type(spec)()
                bare.CopyFrom(spec)
                bare.ClearField("labels")
                digest = hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()
                node_envs[key] = NodeEnv(digest, functools.partial(provide_on_node, key, name))
            return [node_envs[k] if k else None for k in specs]
        data = Path(self.venv_data).absolute()
        client = stack.enter_context(connect(self.venv_manager, self.venv_manager_token, data))
        bench_path = stack.enter_context(_bench_path())
        launch_dir = os.getcwd()

        def provide(spec_and_job: tuple[Any, str]) -> JobEnv:
            spec, name = spec_and_job
            env = client.ensure(spec, name)
            path = client.check_interpreter(env, name)
            # the env's lock as its job will read it: the env's sys.path and the launch dir
            lock = admission.installed(tuple([*path, launch_dir]))
            return JobEnv(env.env_id, env.python_path, bench_path, lock)

        with ThreadPoolExecutor(max_workers=len(distinct)) as pool:
            found = dict(zip(distinct, pool.map(provide, distinct.values()), strict=True))
        return [found[k] if k else None for k in specs]

def check_shared_storage(storage: Any) -> None:
    """A store every node reaches: not a file on the driver's disk (SQLite), and a blob root
    that is not inside the launch dir. Errors name the key and what would be valid."""
    from hydra_plugins.wtb_conf_launcher.settings import LauncherError

    storage = admission.plain(storage)
    why = ("but hydra.launcher.shared_disk=false runs jobs on nodes that do not share this "
           "machine's disk")
    db_url = str(storage.get("db_url") or "")
    if db_url.startswith("sqlite"):
        raise LauncherError(f"storage.db_url={db_url} is an SQLite file here, {why}: use a "
                            "PostgreSQL server every node reaches, storage.db_url="
                            "postgresql+psycopg://USER@HOST/DB (or storage=postgres)")
    checkpoints = str(storage.get("checkpoints") or "")
    if not is_postgres(checkpoints):
        raise LauncherError(f"storage.checkpoints={checkpoints} is an SQLite file here, {why}: "
                            "use a PostgreSQL URL, storage.checkpoints=postgresql://USER@HOST/DB "
                            "(storage=postgres uses storage.db_url's database)")
    blob_root = str(storage.get("blob_root") or "")
    local = "://" not in blob_root or blob_root.lower().startswith("file://")
    path = Path(blob_root.partition("://")[2] if "://" in blob_root else blob_root)
    if local and (not path.is_absolute() or path.resolve().is_relative_to(Path.cwd().resolve())):
        # a node writes into its own copy of the launch dir: the driver never sees the blobs
        raise LauncherError(f"storage.blob_root={blob_root} is inside the launch dir, {why}: "
                            "use a directory every node mounts at the same absolute path, or "
                            "an object store URL, storage.blob_root=s3://BUCKET/PREFIX")
