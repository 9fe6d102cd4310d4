"""The bench's bounds on a run, so that no config loops forever or fills a disk (issue #27):
every super-step of a case stores a LangGraph checkpoint and a commit of its output dir, so a
loop that never ends grows both databases without bound (a probe's: 1 GB in 4 minutes).

- `workflow.recursion_limit`: super-steps per case, passed to LangGraph (whose own default
  is 10,000); hitting it is a `RecursionLimit` failure naming the case.
- `workflow.case_timeout_s`: wall time per case, checked after each checkpoint (a case runs
  in the job's process, so it is never killed mid-node: a node that blocks is
  `hydra.launcher.timeout_s`'s business).
- `workflow.max_checkpoints`: checkpoints a run (all its cases) may store.

A run that hits one fails like any other (its checkpoints so far linked and committed), with
the key to raise in its error. Unset (or null) means the default here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator

from wtb_conf.config.values import fail, json_schema, show

# why these: docs/config.md (the workflow keys)
RECURSION_LIMIT = 100
CASE_TIMEOUT_S = 3600.0
MAX_CHECKPOINTS = 10_000


def whole_number(least: int, default: int) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise fail(f"{show(value)} is not an integer >= {least}; give one, e.g. {default} "
                        "(the default)")
        return value
    return check


def _seconds(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise fail(f"{show(value)} is not a number of seconds > 0; give one, e.g. "
                    f"{CASE_TIMEOUT_S:g} (the default)")
    return value


# the types of the keys in wtb_conf.config.models.WorkflowConfig
Steps = Annotated[int, BeforeValidator(whole_number(1, RECURSION_LIMIT)),
                  json_schema(type="integer", minimum=1)]
Checkpoints = Annotated[int, BeforeValidator(whole_number(1, MAX_CHECKPOINTS)),
                        json_schema(type="integer", minimum=1)]
Seconds = Annotated[float, BeforeValidator(_seconds),
                    json_schema(type="number", exclusiveMinimum=0)]


class GuardTripped(RuntimeError):
    """A case stopped by one of the bench's bounds; the message names the key to raise."""


class RecursionLimit(GuardTripped):
    """The case ran workflow.recursion_limit super-steps without reaching END."""


class CaseTimeout(GuardTripped):
    """The case ran longer than workflow.case_timeout_s."""


class CheckpointLimit(GuardTripped):
    """The run stored workflow.max_checkpoints checkpoints and wanted more."""


@dataclass
class Guards:
    """One run's bounds, and what it has used of them (the checkpoints: all its cases')."""

    recursion_limit: int = RECURSION_LIMIT
    case_timeout_s: float = CASE_TIMEOUT_S
    max_checkpoints: int = MAX_CHECKPOINTS
    checkpoints: int = 0
    _started: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, workflow: Mapping[str, Any]) -> Guards:
        """The bounds a (validated, plain) workflow sets; defaults for the keys it leaves."""
        def get(key: str, default: Any) -> Any:
            value = workflow.get(key)
            return default if value is None else value
        return cls(get("recursion_limit", RECURSION_LIMIT),
                   get("case_timeout_s", CASE_TIMEOUT_S),
                   get("max_checkpoints", MAX_CHECKPOINTS))

    def start(self, case: str) -> None:
        self._started[case] = time.monotonic()

    def stored(self, case: str, step: int, more: bool) -> None:
        """After a case's checkpoint was committed and linked; `more`: tasks are due after
        it (the last checkpoint of a case ends it, so it never trips a bound)."""
        self.checkpoints += 1
        if not more:
            return
        if self.checkpoints >= self.max_checkpoints:
            raise CheckpointLimit(
                f"workflow.max_checkpoints: the run stored {self.checkpoints} checkpoints "
                f"(case {case!r} at step {step}) and was not done; raise "
                "workflow.max_checkpoints if it is meant to store more")
        ran = time.monotonic() - self._started.get(case, time.monotonic())
        if ran > self.case_timeout_s:
            raise CaseTimeout(
                f"workflow.case_timeout_s: case {case!r} ran {ran:.1f} s (over "
                f"{self.case_timeout_s:g} s) without reaching END, stopped at step {step}; "
                "raise workflow.case_timeout_s if it is meant to run longer")

    def explain(self, error: BaseException, case: str) -> BaseException:
        """LangGraph's GraphRecursionError as the bench's own failure, naming the case and
        the key; any other error as it is."""
        # here, not at the top: the config floor is read by `wtb compare` too, which should not
        # pay LangGraph's ~0.5 s import; a job that gets here has imported it already
        from langgraph.errors import GraphRecursionError

        if not isinstance(error, GraphRecursionError):
            return error
        return RecursionLimit(
            f"workflow.recursion_limit: case {case!r} took {self.recursion_limit} steps "
            "without reaching END; raise workflow.recursion_limit if the loop is meant to "
            "run longer")
