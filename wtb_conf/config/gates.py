"""What a gate says: `NAME OP VALUE`, read once (wtb_conf.results.gates judges jobs by it).

VALUE is a number or `baseline`, `baseline - X`, `baseline + X`; docs/compare.md has the rest.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_GATE = re.compile(r"^\s*(?P<name>[^\s<>=]+)\s*(?P<op><=|>=|<|>)\s*(?P<rhs>.+?)\s*$")
_RHS = re.compile(r"^baseline(?:\s*(?P<sign>[-+])\s*(?P<margin>[0-9.eE+-]+))?$")
SHAPE = ('write NAME OP VALUE, e.g. "kept.f1 < baseline - 0.02" (OP: <, <=, >, >=; VALUE: a '
         "number, baseline, or baseline +/- a number)")


class GateError(ValueError):
    """A gate that cannot be read or names what the jobs do not have; says what is valid."""


@dataclass(frozen=True)
class Gate:
    text: str  # as the user wrote it
    name: str
    op: str
    baseline: bool  # VALUE is relative to the baseline: `margin` is X of `baseline +/- X`
    margin: float  # the number the value (or the difference to the baseline) is held to


def parse(text: Any, where: str = "--fail-if") -> Gate:
    """A gate from its text; `where` names it in errors (`compare.gates[0]`)."""
    found = _GATE.match(text) if isinstance(text, str) else None
    if found is None:
        raise GateError(f"{where} {text!r}: {SHAPE}")
    rhs = found["rhs"]
    relative = _RHS.match(rhs)
    try:
        if relative:
            margin = float(relative["margin"] or 0) * (-1 if relative["sign"] == "-" else 1)
        else:
            margin = float(rhs)
    except ValueError:
        raise GateError(f"{where} {text!r}: {rhs!r} is not a number; {SHAPE}") from None
    return Gate(text, found["name"], found["op"], bool(relative), margin)
