"""A job's identity: what it ran (resolved config), with what (env lock), which code (the
sources of the modules its node targets come from) and on which input files. Equal
identities give equal results for a deterministic workflow, so a completed identity need not
run again (the job cache)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys of the job config that say where or whether to run, or how to judge the outcome, not
# what runs: left out of the digest (the scoring keys of a workflow too, see wtb_conf.job.scoring).
# docs/config.md ("The job cache") lists both; tests/test_store.py holds the two to each other.
NOT_IDENTITY = ("storage", "rerun", "share_prefixes", "compare")
SCORING_KEYS = ("evaluators", "expected")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_digest(data: Any) -> str:
    """SHA-256 of `data` as sorted-key JSON (what every config-derived key is made of)."""
    return _sha(json.dumps(data, sort_keys=True, default=str).encode())


def config_digest(cfg: DictConfig) -> str:
    """SHA-256 of the resolved job config, without the keys in NOT_IDENTITY."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for key in NOT_IDENTITY:
        data.pop(key, None)
    for key in SCORING_KEYS:
        (data.get("workflow") or {}).pop(key, None)
    return json_digest(data)


def env_digest(lock: list[str]) -> str:
    return _sha("\n".join(sorted(lock)).encode())


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def _module(target: str) -> tuple[str, str] | None:
    """(module name, source file) of the module a dotted target lives in."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            return name, spec.origin
        if spec is not None:
            return None  # a compiled or namespace module: no source to hash
    return None


def sources_digest(node: Any) -> str:
    """SHA-256 over the sources of the modules the `_target_`s in `node` live in, by module
    name (not path), so that the same code in another checkout has the same digest."""
    modules = sorted({m for t in _targets(node) if (m := _module(t))})
    h = hashlib.sha256()
    for name, path in modules:
        with open(path, "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def code_digest(workflow: DictConfig) -> str:
    """The digest of the workflow's code. The evaluators' code is not part of it: it judges
    the outcome, and wtb_conf.job.scoring digests it on its own."""
    data = OmegaConf.to_container(workflow, resolve=True)
    assert isinstance(data, dict)
    return sources_digest({k: v for k, v in data.items() if k not in SCORING_KEYS})


def job_key(config: str, env: str, code: str, inputs: str | None = None) -> str:
    # (inputs joined only when there are some: job keys from before input files counted stay)
    parts = [config, env, code] + ([inputs] if inputs else [])
    return _sha("\n".join(parts).encode())


def input_files(cases: Any, launch_dir: Path) -> list[str]:
    """The files the cases' inputs name: every string value that is the path of a regular
    file inside the launch dir (relative to it, or absolute), as a path relative to it."""
    root = launch_dir.resolve()
    found = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str) and value and len(value) < 4096 and "\n" not in value:
            try:
                path = (root / value).resolve()
                if path.is_file() and path.is_relative_to(root):
                    found.add(path.relative_to(root).as_posix())
            except (OSError, ValueError):
                pass

    visit(cases)
    return sorted(found)


def identity_of(cfg: DictConfig, lock: list[str], inputs: str | None = None) -> dict[str, str]:
    """The digests recorded on a run: config, env_digest, code_digest and their job_key
    (with `inputs`, the commit of the case input files, when the cases name files)."""
    out = {"config": config_digest(cfg), "env_digest": env_digest(lock),
           "code_digest": code_digest(cfg.workflow)}
    out["job_key"] = job_key(out["config"], out["env_digest"], out["code_digest"], inputs)
    out["inputs"] = inputs or ""
    return out
