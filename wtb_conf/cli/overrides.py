"""`wtb evaluate`'s overrides, checked before any run is scored: a bad one is an error that
names its key, and nothing is recorded (a failed evaluation would replace the good scores
everywhere, as the newest evaluation counts)."""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from wtb_conf.job.scoring import check_compare, evaluators_of, stored_config
from wtb_conf.job.workflow import WorkflowError
from wtb_conf.store import Store, StoreError

_PREFIX = "workflow.evaluators"


def _touched(overrides: Iterable[str], names: Iterable[str]) -> set[str]:
    """The evaluators an override changes (all of them, for one of `workflow.evaluators`
    itself or of `workflow`)."""
    names = set(names)
    out: set[str] = set()
    for word in overrides:
        key = word.lstrip("~+").partition("=")[0]
        if key in ("workflow", _PREFIX):
            return names
        if key.startswith(_PREFIX + "."):
            out.add(key[len(_PREFIX) + 1:].split(".")[0])
    return out & names


def _check_params(name: str, fn: Any) -> None:
    """An evaluator's params against its function's signature: names it takes, values of the
    types it annotates (where it does; an unannotated one takes anything)."""
    target = getattr(fn, "func", fn)
    params = dict(getattr(fn, "keywords", None) or {})
    try:
        signature = inspect.signature(target)
        hints = typing.get_type_hints(target)
    except (TypeError, ValueError, NameError):  # a builtin, an annotation that cannot resolve
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for key, value in params.items():
        where = f"workflow.evaluators.{name}.{key}"
        if key not in signature.parameters:
            if takes_any:
                continue
            valid = [p for p in signature.parameters if p not in ("state", "expected")]
            raise WorkflowError(f"{where}: {target.__name__}() takes no parameter {key!r}; it "
                                f"takes {', '.join(valid) or 'none'}")
        if key not in hints:
            continue
        try:
            TypeAdapter(hints[key]).validate_python(value)
        except ValidationError:
            shown = inspect.formatannotation(hints[key])
            raise WorkflowError(f"{where}: {value!r} is not a valid {shown} (the type "
                                f"{target.__name__}() gives {key})") from None


def check_overrides(store: Store, run_ids: Iterable[str], overrides: list[str]) -> list[str]:
    """The errors, one line per run, that scoring `run_ids` with `overrides` would hit in its
    config: the stored config changed by Hydra, its scoring keys and `compare:` checked with
    the config models, the evaluators imported, and the params of those the overrides touch
    checked against their signatures. Empty: every run can be scored."""
    errors = []
    for run_id in run_ids:
        run = store.run(run_id)
        if run["status"] == "running":
            errors.append(f"run {run_id[:8]} is running (or its process died and nothing "
                          "marked it): not scored")
            continue
        try:
            cfg = stored_config(run["config_yaml"], overrides)
            workflow = cfg.get("workflow") or {}
            check_compare(cfg.get("compare"), workflow)
            # the evaluators' modules import as evaluate_stored imports them
            for path in (str(Path.cwd()), str(Path(run["launch_dir"] or ".").resolve())):
                if path not in sys.path:
                    sys.path.insert(0, path)
            evaluators = {ev.name: ev.fn for ev in evaluators_of(workflow)}
            for name in sorted(_touched(overrides, evaluators)):
                _check_params(name, evaluators[name])
        except (WorkflowError, StoreError) as e:
            errors.append(f"run {run_id[:8]}: {e}")
    return errors
