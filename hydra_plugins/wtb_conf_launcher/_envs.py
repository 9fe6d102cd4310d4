"""Which interpreter each job of a sweep runs in: the driver's own, or a venv_manager env.

Only an app whose config has an `env` node that asks for packages or a Python version gets
envs; for every other app (and for wtb_conf's default env) this costs nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


@dataclass(frozen=True)
class Interpreter:
    env_id: str | None = None
    python: str | None = None
    bench_path: str = ""  # a directory that makes wtb_conf importable from the env

    @property
    def key(self) -> str:
        return self.env_id or ""


DRIVER = Interpreter()


def _touches_env(overrides: Sequence[str]) -> bool:
    return any(o.lstrip("+~").split("=")[0].split(".")[0] == "env" for o in overrides)


@contextlib.contextmanager
def _bench_path() -> Iterator[str]:
    """wtb_conf and its Hydra plugins (every `hydra_plugins/wtb_*`: the job's pickled Hydra
    state names them all), linked into a directory of their own: an env's actors get these on
    their path without the driver's site-packages (and its other packages)."""
    import wtb_conf

    plugins = Path(__file__).parent.parent  # the hydra_plugins directory this one is in
    root = Path(tempfile.mkdtemp(prefix="wtb-bench-path-"))
    try:
        (root / "hydra_plugins").mkdir()
        (root / "wtb_conf").symlink_to(Path(wtb_conf.__file__).parent)
        for path in sorted(plugins.glob("wtb_*/__init__.py")):
            (root / "hydra_plugins" / path.parent.name).symlink_to(path.parent)
        yield str(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def interpreters(launcher: Any, params: dict[str, Any], job_overrides: Sequence[Sequence[str]],
                 first_num: int) -> Iterator[list[Interpreter]]:
    """One Interpreter per job; provisions each distinct env once, in parallel, and checks
    that it can run an actor before any actor is started in it."""
    config = launcher.config
    if "env" not in config:
        yield [DRIVER] * len(job_overrides)
        return
    from wtb_conf.envs import connect, spec_for, wants_env

    keys: list[bytes | None] = []  # per job: its spec, serialized (None: the driver's)
    distinct: dict[bytes, tuple[Any, str]] = {}  # spec -> (spec, the first job that wants it)
    for i, overrides in enumerate(job_overrides):
        if not wants_env(config.env) and not _touches_env(overrides):
            keys.append(None)  # the default env, and no override changes it
            continue
        job_cfg = launcher.hydra_context.config_loader.load_sweep_config(config, list(overrides))
        env_cfg = OmegaConf.to_container(job_cfg.env, resolve=True) if "env" in job_cfg else {}
        if not wants_env(env_cfg):
            keys.append(None)
            continue
        choices = job_cfg.hydra.runtime.choices
        labels = {k: choices[k] for k in ("workflow", "variant", "env") if choices.get(k)}
        name = f"job #{first_num + i} ({' '.join(overrides)})"
        spec = spec_for(env_cfg, labels, name)
        key = spec.SerializeToString(deterministic=True)
        distinct.setdefault(key, (spec, name))
        keys.append(key)
    if not distinct:
        yield [DRIVER] * len(job_overrides)
        return

    data = Path(params.get("venv_data") or "data/venv_manager").absolute()
    with connect(params.get("venv_manager"), params.get("venv_manager_token"), data) as client, \
            _bench_path() as bench_path:

        def provide(spec_and_job: tuple[Any, str]) -> Interpreter:
            spec, job = spec_and_job
            env = client.ensure(spec, job)
            return Interpreter(env.env_id, client.check_interpreter(env, job), bench_path)

        with ThreadPoolExecutor(max_workers=len(distinct)) as pool:
            found = dict(zip(distinct, pool.map(provide, distinct.values()), strict=True))
        yield [found[k] if k else DRIVER for k in keys]
