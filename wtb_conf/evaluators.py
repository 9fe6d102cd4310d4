"""Built-in evaluators, for `workflow.evaluators` (docs/compare.md):

    evaluators:
      total_ok: {_target_: wtb_conf.evaluators.close_to, key: total_amount, abs_tol: 0.01}
      has_report: {_target_: wtb_conf.evaluators.file_exists, path: report.md}

Each is called as `fn(state, **params)` with the case's final state, in the case's output
directory. `key` is a dotted path into the state (`summary.total`). Those that take
`expected` compare with the case's reference value (`workflow.expected.CASE`); when that
value is a mapping, the entry under `key` is used, so one mapping of fields serves several
evaluators.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _value(state: Mapping[str, Any], key: str) -> Any:
    value: Any = state
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"the final state has no {key!r}")
        value = value[part]
    return value


def _reference(expected: Any, key: str) -> Any:
    if isinstance(expected, Mapping):
        if key not in expected:
            raise KeyError(f"the expected value has no {key!r}; it has {sorted(expected)}")
        return expected[key]
    return expected


def _file(path: str) -> Path:
    """A path inside the case directory (the working directory)."""
    root = Path.cwd().resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"path {path!r} leaves the case directory")
    return target


def equals(state: Mapping[str, Any], key: str, expected: Any) -> bool:
    """The state's `key` equals the expected value."""
    return _value(state, key) == _reference(expected, key)


def close_to(state: Mapping[str, Any], key: str, expected: Any, rel_tol: float = 1e-9,
             abs_tol: float = 0.0) -> bool:
    """The state's `key` is a number within `rel_tol` / `abs_tol` of the expected one."""
    value, want = _value(state, key), _reference(expected, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key!r} is {value!r}, not a number")
    return math.isclose(value, float(want), rel_tol=rel_tol, abs_tol=abs_tol)


def contains(state: Mapping[str, Any], key: str, text: str) -> bool:
    """`text` is a substring of the state's `key` (as a string)."""
    return text in str(_value(state, key))


def matches(state: Mapping[str, Any], key: str, pattern: str) -> bool:
    """The regular expression `pattern` matches somewhere in the state's `key`."""
    return re.search(pattern, str(_value(state, key))) is not None


def file_exists(state: Mapping[str, Any], path: str) -> bool:
    """The case wrote `path` (relative to its output directory)."""
    return _file(path).is_file()


def file_contains(state: Mapping[str, Any], path: str, text: str | None = None,
                  pattern: str | None = None) -> bool:
    """The case's file `path` contains `text`, or matches the regular expression `pattern`."""
    if (text is None) == (pattern is None):
        raise ValueError("give one of text or pattern")
    target = _file(path)
    if not target.is_file():
        return False
    content = target.read_text(errors="replace")
    return text in content if text is not None else re.search(pattern, content) is not None


def file_equals(state: Mapping[str, Any], path: str, content: str) -> bool:
    """The case's file `path` holds exactly `content` (as text)."""
    target = _file(path)
    return target.is_file() and target.read_text(errors="replace") == content
