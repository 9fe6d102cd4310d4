"""Checks of one whole job config that its groups' models cannot make alone: its top-level
keys, the state fields that metrics and evaluators' `key`s name, node and router parameters
against their functions' signatures, and the case input files a workflow declares (state
fields of type `file` / `text_file`). Each problem is one line naming the key and what would
be valid, values clipped (a 100 KB value is not echoed whole).

They run at the sweep's start on every job's config (wtb_conf.driver.preflight) and again when a job
starts (wtb_conf.job.admission.job_config); the parameter checks run wherever a `_target_` is
imported (wtb_conf.job.workflow)."""

from __future__ import annotations

import codecs
import functools
import inspect
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from wtb_conf.config.models import GROUPS, FlagsConfig
from wtb_conf.config.values import show

LIMIT = 200  # characters of a value shown in a message
FILE_TYPES = ("file", "text_file")  # state types whose case values name input files
# what Hydra itself puts at the top of a primary config (the task config has none of it)
HYDRA_KEYS = ("hydra",)


def clip(text: str, limit: int = LIMIT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def clip_message(message: str) -> str:
    """`message` with every run of more than 2 * LIMIT non-blank characters clipped to LIMIT:
    a long value is one such run, the names a message lists are not, and a value clipped
    already (a few characters over LIMIT, quoted) is left as it is."""
    return re.sub(rf"\S{{{2 * LIMIT + 1},}}", lambda m: clip(m[0]), message)


def top_level_problems(keys: Any) -> list[str]:
    """Keys at the top of a config that no group or switch has (`+compre.objective=...`)."""
    switches = FlagsConfig.keys()
    unknown = [k for k in keys if k not in GROUPS and k not in switches and k not in HYDRA_KEYS]
    return [f"{clip(str(k))}: unknown top-level key; the config has the groups "
            f"{', '.join(GROUPS)} (variant=... and +experiment=... set keys in them) and the "
            f"switches {', '.join(switches)}" for k in unknown]


def _state(workflow: Mapping[str, Any]) -> Mapping[str, Any] | None:
    state = workflow.get("state")
    return state if isinstance(state, Mapping) and not workflow.get("factory") else None


def state_path_problems(workflow: Mapping[str, Any]) -> list[str]:
    """Metric paths and evaluators' `key`s whose first part names no state field (a factory's
    state is not declared: not checked)."""
    state = _state(workflow)
    if not state:
        return []
    fields = ", ".join(state)
    out = []
    named = [(f"workflow.metrics.{name}", path)
             for name, path in (workflow.get("metrics") or {}).items()]
    named += [(f"workflow.evaluators.{name}.key", spec.get("key"))
              for name, spec in (workflow.get("evaluators") or {}).items()
              if isinstance(spec, Mapping) and "key" in spec]
    for key, path in named:
        if isinstance(path, str) and path.split(".")[0] not in state:
            out.append(f"{key}: {show(path)} names no state field; the state has {fields}")
    return out


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


@functools.lru_cache(maxsize=512)
def _adapter(annotation: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(annotation)
    except Exception:  # a type pydantic cannot check (a class of the user's): not checked
        return None


def _fits(annotation: Any, value: Any) -> bool:
    try:
        adapter = _adapter(annotation)
    except TypeError:  # unhashable annotation metadata
        adapter = None
    if adapter is None:
        return True
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    except Exception:  # a validator of the user's that raised something else: its business
        return True
    return True


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn, eval_str=True)
    except (NameError, SyntaxError, TypeError, AttributeError):
        pass  # annotations that do not evaluate here (TYPE_CHECKING imports): left unchecked
    except ValueError:
        return None
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature
        return None


def param_problems(key: str, target: str, fn: Callable, params: Mapping[str, Any],
                   takes_state: bool = True) -> list[str]:
    """`params` (a `{_target_: target, **params}` at `key`) against `fn`'s signature: a name
    it does not take (unless it takes **kwargs), a value its annotation refuses."""
    sig = _signature(fn)
    if sig is None:
        return []
    parameters = list(sig.parameters.values())
    if takes_state and parameters and parameters[0].kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        parameters = parameters[1:]  # the state
    named = {p.name: p for p in parameters if p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    any_name = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    out = []
    for name, value in params.items():
        p = named.get(name)
        if p is None:
            if not any_name:
                takes = ", ".join(named) or "no parameters but the state"
                out.append(f"{key}.{clip(str(name))}: not a parameter of {target}; it takes "
                           f"{takes}")
            continue
        if p.annotation is p.empty or isinstance(p.annotation, str):
            continue
        if not _fits(p.annotation, value):
            kind = _type_name(p.annotation)
            out.append(f"{key}.{name}: {show(value)} is not {_a(kind)} ({target} takes "
                       f"{name}: {kind})")
    return out


def _a(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _file_type(spec: Any) -> str | None:
    kind = spec.get("type") if isinstance(spec, Mapping) else spec
    return kind if kind in FILE_TYPES else None


@functools.lru_cache(maxsize=4096)
def _file_problem(path: str, kind: str, size: int, mtime_ns: int) -> str | None:
    """What is wrong with a regular file as a `kind` input (cached by its size and mtime)."""
    try:
        with open(path, "rb") as f:
            if kind == "text_file":
                decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
                while chunk := f.read(1 << 20):
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as e:
                        return (f"is not UTF-8 text (byte {offset + e.start}: {e.reason}); "
                                "declare the field `file` if its node reads bytes")
                    offset += len(chunk)
                decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        return f"is not UTF-8 text (it ends inside a character: {e.reason})"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    return None


def case_file_problems(workflow: Mapping[str, Any], launch_dir: Path) -> list[str]:
    """Every case value of a `file` / `text_file` state field names a readable regular file
    (relative to the launch dir, or absolute); a `text_file` is UTF-8."""
    state = _state(workflow) or {}
    files = {field: kind for field, spec in state.items() if (kind := _file_type(spec))}
    cases = workflow.get("cases")
    if not files or not isinstance(cases, Mapping):
        return []
    out = []
    for case, inputs in cases.items():
        if not isinstance(inputs, Mapping):
            continue
        for field, kind in files.items():
            if field not in inputs:
                continue
            key, value = f"workflow.cases.{case}.{field}", inputs[field]
            if not isinstance(value, str) or not value:
                out.append(f"{key}: expected the path of a file (the field is a {kind}), got "
                           f"{show(value)}")
                continue
            path = launch_dir / value
            try:
                st = path.stat()
            except OSError as e:
                why = "does not exist" if isinstance(e, FileNotFoundError) else e.strerror
                out.append(f"{key}: {show(value)} {why} (paths are relative to the launch "
                           f"dir {clip(str(launch_dir))}); name an existing file")
                continue
            if path.is_dir():
                out.append(f"{key}: {show(value)} is a directory; a {kind} field names a file")
            elif not path.is_file():
                out.append(f"{key}: {show(value)} is not a regular file")
            elif problem := _file_problem(os.fspath(path), kind, st.st_size, st.st_mtime_ns):
                out.append(f"{key}: {show(value)} {problem}")
    return out


KEY_MAX = 255  # Hydra looks a key up as a file name (a config group): a longer one fails


def long_override_key(argv: list[str]) -> str | None:
    """The message for a command-line override whose key no config can have (Hydra itself
    ends in an OSError traceback, `File name too long`), or None."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if len(key) > KEY_MAX:
            return (f"{key[:60]}…: an override key of {len(key)} characters; config keys "
                    f"and groups are at most {KEY_MAX} (did a value lose its '='?)")
    return None
