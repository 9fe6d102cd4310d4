"""Evaluators: score each case of a run after it ends, aggregate the scores per run.

`workflow.evaluators: {NAME: {_target_: dotted.path, **params}}` are called like nodes,
`fn(state, **params)`, with the case's final state and its output directory as working
directory; a function that takes `expected` gets `workflow.expected.CASE`. A score is a number,
a bool (pass/fail) or a dict of those (`NAME.KEY`). An evaluator that raises or returns
anything else is that evaluator's error on that case: recorded, shown, never fatal.

The same code scores a job when it ends (wtb_conf.job.task), a cache hit whose evaluators changed,
and stored runs (`wtb evaluate`). docs/compare.md has the user's view.
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wtb_conf import case_context
from wtb_conf.config import gates
from wtb_conf.config.models import RATES, CompareConfig, ScoringConfig, check
from wtb_conf.job.identity import SCORING_KEYS, json_digest, sources_digest
from wtb_conf.job.workflow import WorkflowError, _callable
from wtb_conf.store import Store, StoreError
from wtb_conf.trials import split_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluator:
    name: str
    fn: Callable[..., Any]
    expected: inspect.Parameter | None  # the function's `expected` parameter, if it has one


def evaluators_of(workflow: Any) -> list[Evaluator]:
    """The workflow's evaluators, imported; errors name the YAML key."""
    scoring = check(ScoringConfig, workflow, "workflow", error=WorkflowError)
    out = []
    for name, spec in (scoring.evaluators or {}).items():
        fn = _callable(f"workflow.evaluators.{name}", spec)
        target = getattr(fn, "func", fn)
        try:
            param = inspect.signature(target).parameters.get("expected")
        except (TypeError, ValueError):  # a builtin without a signature: no `expected`
            param = None
        out.append(Evaluator(name, fn, param))
    return out


def check_compare(compare: Any, workflow: Mapping[str, Any]) -> dict[str, Any]:
    """`compare: {objective, mode, baseline, gates}`, its names checked against the
    workflow's metrics and evaluators."""
    compare = check(CompareConfig, compare or {}, "compare", error=WorkflowError).model_dump()
    metrics = list(workflow.get("metrics") or {})
    scores = list(workflow.get("evaluators") or {})

    def known(name: str, where: str) -> None:
        if not (name in metrics or name in RATES or name.split(".")[0] in scores):
            raise WorkflowError(
                f"{where}: {name!r} is not a metric or a score of this workflow; valid: "
                f"{', '.join([*metrics, *scores, *RATES])} (or NAME.KEY of an evaluator that "
                "returns a dict)")

    if compare["objective"] is not None:
        known(compare["objective"], "compare.objective")
    for i, text in enumerate(compare["gates"] or []):
        try:
            known(gates.parse(text, f"compare.gates[{i}]").name, f"compare.gates[{i}] {text!r}")
        except gates.GateError as e:
            raise WorkflowError(str(e)) from None
    return compare


def eval_key(workflow: Mapping[str, Any]) -> str:
    """What scored: the evaluators' config, the expected values and their code."""
    scoring = {k: workflow.get(k) for k in SCORING_KEYS}
    return json_digest([scoring, sources_digest(scoring["evaluators"])])


def _check(name: str, value: Any) -> dict[str, float | bool]:
    """A score, or the error that says what an evaluator must return."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # np.float64, np.bool_
        value = value.item()
    if isinstance(value, bool):
        return {name: value}
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"returned {value!r}; a score must be a finite number")
        return {name: value}
    if isinstance(value, Mapping) and value:
        out: dict[str, float | bool] = {}
        for key, item in value.items():
            out.update(_check(f"{name}.{key}", item))
        return out
    raise TypeError(f"returned {type(value).__name__} {value!r:.80}; an evaluator returns a "
                    "number, a bool (pass/fail) or a dict of those")


def score_case(evaluators: list[Evaluator], case: str, state: Mapping[str, Any],
               case_dir: Path, launch_dir: Path,
               expected: Mapping[str, Any] | None) -> dict[str, Any]:
    """{"scores": {NAME[.KEY]: value}, "errors": {NAME: "Type: message"}} for one case
    (`case`: its key, CASE or CASE/TRIAL)."""
    scores: dict[str, Any] = {}
    errors: dict[str, str] = {}
    case = split_key(case)[0]  # a trial's key: its case's expected values
    with case_context(case_dir, launch_dir):
        for ev in evaluators:
            kwargs = {}
            if ev.expected is not None:
                if expected is not None and case in expected:
                    kwargs["expected"] = expected[case]
                elif ev.expected.default is inspect.Parameter.empty:
                    errors[ev.name] = (f"KeyError: workflow.expected.{case}: no reference value "
                                       f"for case {case!r}, and evaluator {ev.name!r} takes "
                                       "`expected`")
                    continue
            try:
                scores.update(_check(ev.name, ev.fn(dict(state), **kwargs)))
            except Exception as e:  # (a KeyError's str() is its key, quoted: take the text)
                text = e.args[0] if isinstance(e, KeyError) and e.args else e
                errors[ev.name] = f"{type(e).__name__}: {text}"
    return {"scores": scores, "errors": errors}


def summarize(cases: Mapping[str, Mapping[str, Any]], statuses: Mapping[str, str]) -> dict:
    """A run's aggregates: per score the mean (numbers) or pass rate (bools), the pass rate
    over every bool score, the success rate (completed cases / cases) and error counts."""
    values: dict[str, list[Any]] = {}
    errors: dict[str, int] = {}
    for case in cases.values():
        for name, value in case["scores"].items():
            values.setdefault(name, []).append(value)
        for name in case["errors"]:
            errors[name] = errors.get(name, 0) + 1
    scores, kinds = {}, {}
    for name, vals in sorted(values.items()):
        scores[name] = sum(float(v) for v in vals) / len(vals)
        kinds[name] = "pass_rate" if all(isinstance(v, bool) for v in vals) else "mean"
    # an evaluator that returned a number on some case is a mean, not a check
    checks = [v for name, vals in values.items() if kinds[name] == "pass_rate" for v in vals]
    done = sum(s == "completed" for s in statuses.values())
    return {
        "scores": scores,
        "kinds": kinds,
        "errors": errors,
        "pass_rate": sum(checks) / len(checks) if checks else None,
        "success_rate": done / len(statuses) if statuses else None,
        "cases": len(statuses),
    }


def score_run(evaluators: list[Evaluator], workflow: Mapping[str, Any],
              threads: list[dict[str, Any]], case_dir: Callable[[str], Path],
              launch_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score every completed case of a run: (cases, summary). `threads`: the run's cases with
    `case`, `status` and `final_state`; `case_dir(case)`: where that case's files are."""
    expected = workflow.get("expected")
    cases = {}
    for t in threads:
        if t["status"] == "completed" and not evaluators:  # nothing to score: no files needed
            cases[t["case"]] = {"scores": {}, "errors": {}}
        elif t["status"] == "completed":
            cases[t["case"]] = score_case(evaluators, t["case"], t["final_state"] or {},
                                          case_dir(t["case"]), launch_dir, expected)
    statuses = {t["case"]: t["status"] for t in threads}
    return cases, summarize(cases, statuses)


def rescore(store: Store, run_id: str, workflow: Mapping[str, Any], launch_dir: Path,
            threads_of: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score a stored run without running it: each case's final state from the store, its
    files restored from its last commit into a temporary directory. `threads_of`: the run
    that holds the cases (a cache hit's source)."""
    evaluators = evaluators_of(workflow)
    threads = store.threads(threads_of or run_id)
    with tempfile.TemporaryDirectory(prefix="wtb-evaluate-") as tmp:
        def case_dir(case: str) -> Path:
            commit = next(t["commit"] for t in threads if t["case"] == case)
            path = Path(tmp, case)
            if commit:
                store.restore(commit, path)
            return path

        return score_run(evaluators, workflow, threads, case_dir, launch_dir)


def stored_config(config_yaml: str, overrides: list[str]) -> dict[str, Any]:
    """A run's stored config with Hydra overrides applied by Hydra's own parser and
    composer (`+key=value` to add, `key=value` to change, `~key` to remove)."""
    from omegaconf import OmegaConf

    if not overrides:
        return OmegaConf.to_container(OmegaConf.create(config_yaml), resolve=True)
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with tempfile.TemporaryDirectory(prefix="wtb-evaluate-") as tmp:
        Path(tmp, "stored.yaml").write_text(config_yaml)
        try:
            with initialize_config_dir(config_dir=tmp, version_base="1.3"):
                cfg = compose(config_name="stored", overrides=list(overrides))
        except HydraException as e:
            raise WorkflowError(f"override {' '.join(overrides)}: {e}") from None
    return OmegaConf.to_container(cfg, resolve=True)


def evaluate_stored(store: Store, run_id: str, overrides: list[str]) -> dict[str, Any]:
    """`wtb evaluate`: score a stored run with its config's evaluators (after `overrides`)
    and record the evaluation; nothing runs. Returns the run's new summary."""
    run = store.run(run_id)
    if run["status"] == "running":
        raise StoreError(f"run {run_id[:8]} is running (or its process died and nothing "
                         "marked it): not scored")
    try:
        cfg = stored_config(run["config_yaml"], overrides)
        workflow = cfg.get("workflow") or {}
        compare = check_compare(cfg.get("compare"), workflow)
        launch = Path(run["launch_dir"] or ".").resolve()
        # the evaluators' modules import as in the sweep, or from here if the project moved
        for path in (str(Path.cwd()), str(launch)):
            if path not in sys.path:
                sys.path.insert(0, path)
        cases, summary = rescore(store, run_id, workflow, launch,
                                 threads_of=run["cached_from"])
    except WorkflowError as e:
        raise StoreError(f"run {run_id[:8]}: {e}") from None
    store.add_evaluation(run_id, "evaluate", eval_key(workflow), compare, cases, summary)
    return summary


def _lookup(state: Mapping[str, Any], dotted: str) -> Any:
    value: Any = state
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def metrics_of(finals: dict[str, dict], spec: Mapping[str, str] | None) -> dict[str, Any]:
    """`case/metric` for every case, plus `metric` = the mean over cases when numeric. A case
    whose final state has no value there (None, or the path ends early) is missing: its
    `case/metric` is null and the run has no mean (a mean over the other cases would rank
    the job on part of its cases); the log says which. (That the path's first part is a
    state field is checked before the sweep: wtb_conf.config.checks.)"""
    out: dict[str, Any] = {}
    for name, key in (spec or {}).items():
        values, missing = [], []
        for case, state in finals.items():
            out[f"{case}/{name}"] = value = _lookup(state, key)
            values.append(value)
            if value is None:
                missing.append(case)
        if missing:
            log.warning("metric %s (%s) is missing in case %s: no mean over the cases", name,
                        key, ", ".join(missing))
        numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numeric and len(numeric) == len(values):
            out[name] = sum(numeric) / len(numeric)
    return out
