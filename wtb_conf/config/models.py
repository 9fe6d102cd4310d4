"""The config groups `workflow`, `env`, `storage`, `fork` and `compare`, each described once as a
pydantic model: every bad value is refused the same way, as `<group>.<key path>: <what is
wrong>; <what would be valid>` (`workflow.edges[1]: 'dubble' is not a node; nodes are [...]`),
and `wtb schema` writes the JSON Schemas an editor checks the YAML files against
(wtb_conf.config.jsonschema). The value types and their messages are in wtb_conf.config.values,
the base of the models (Group) and `check` in wtb_conf.config.group.

The models check shapes, types and names within a group. What needs more than the config
(importing a `_target_`, a run in the store, the driver's Python) stays with the code that
needs it, and reports key paths the same way. Every key is documented in docs/config.md.

Two modes: whole (a job's config: required keys, routes to unknown nodes), and `partial`, for
a group of the sweep's primary config that a sweep may change in every job: only its wrong
values, since a variant may add the node an edge names or set the `_target_` its base leaves
`???` (wtb_conf.driver.callback decides which)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, ClassVar

from omegaconf import OmegaConf
from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, ValidationInfo, model_validator

# Group, CallableSpec and check are imported from here too, as they were before they moved
from wtb_conf.config.group import CallableSpec, Group, check
from wtb_conf.config.guards import Checkpoints, Seconds, Steps, whole_number
from wtb_conf.config.values import (
    ENDS,
    REDUCERS,
    STARTS,
    TYPES,
    BlobRoot,
    CheckpointId,
    CheckpointsAt,
    ConfigError,
    DbUrl,
    EvaluatorName,
    IndexUrl,
    Key,
    Names,
    NodeName,
    NodeRef,
    PackageString,
    PythonVersion,
    RunId,
    Size,
    Text,
    expect,
    fail,
    is_partial,
    json_schema,
    mapping,
    one_of,
)
from wtb_conf.storage import StorageSpec
from wtb_conf.store.errors import StoreError

# The per-run rates a compare.objective may name beside the metrics and evaluators' scores
# (scoring computes them; compare shows them): here, where compare.objective is checked.
RATES = ("pass_rate", "success_rate")
# How many times each case runs (wtb_conf.job.cases); 1 is a run as it was before trials.
Trials = Annotated[int, BeforeValidator(whole_number(1, 1)),
                   json_schema(type="integer", minimum=1)]


class StateField(Group):
    what = "a state field"
    shape = f"a type name ({', '.join(TYPES)}) or {{type: TYPE, reducer: REDUCER}}"
    type: one_of(*TYPES) = "any"
    reducer: one_of(*REDUCERS) | None = None


def _short_field(value: Any) -> Any:  # `rows: list` is `rows: {type: list}`
    return {"type": value or "any"} if isinstance(value, str) or value is None else value


StateSpec = Annotated[StateField, BeforeValidator(_short_field), json_schema(anyOf=[
    {"enum": [*TYPES, None]},
    {"type": "object", "additionalProperties": False,
     "properties": {"type": {"enum": list(TYPES)}, "reducer": {"enum": [*REDUCERS, None]}}}])]
Edge = Annotated[list[NodeRef], Field(min_length=2, max_length=2), expect("a pair [from, to]"),
                 json_schema(type="array", items={"type": "string"}, minItems=2, maxItems=2)]


class RouteSpec(Group):
    what = "a route"
    shape = "{router: {_target_: ...}, to: [node, ...]}"
    required = {"router": "the callable returning the next node's name: {_target_: ...}",
                "to": "the names the router may return: [node, ...] (or END)"}
    router: CallableSpec = Field(None, description="fn(state, **params) -> a name in `to`")
    to: Annotated[list[NodeRef], Field(min_length=1),
                  expect("a non-empty list of node names (or END)")] = Field(
        None, description="the names the router may return: nodes or END")


class ScoringConfig(Group):
    """The keys scoring reads (`wtb evaluate` checks these alone)."""

    model_config = ConfigDict(extra="ignore")
    what = "a workflow"
    shape = "a mapping of workflow keys (docs/config.md)"
    cases: mapping(dict[Key, mapping(dict[Key, Any], "FIELD: value (the case's input)")],
                    "CASE: {field: value, ...}") | None = Field(
        None, description="CASE: the initial state of that case; each runs as its own thread")
    metrics: mapping(dict[Key, Annotated[str, expect("a dotted path into the final state, "
                                                        "e.g. rows_out")]],
                      "METRIC: state.key.path") | None = Field(
        None, description="METRIC: dotted path of a key in each case's final state")
    evaluators: mapping(dict[EvaluatorName, CallableSpec],
                         "NAME: {_target_: ...}") | None = Field(
        None, description="NAME: {_target_: ..., **params}: scores each case after it ends")
    expected: mapping(dict[Key, Any], "CASE: reference value") | None = Field(
        None, description="CASE: the reference value for evaluators taking `expected`")

    @model_validator(mode="after")
    def _names(self, info: ValidationInfo) -> ScoringConfig:
        if is_partial(info):
            return self
        for case in self.expected or {}:
            if self.cases and case not in self.cases:
                raise fail(f"not a case; cases are {sorted(self.cases)}", "expected", case)
        taken = [*(self.metrics or {}), *RATES]
        for name in self.evaluators or {}:
            if name in taken:  # one column of the comparison per name
                raise fail(f"a metric (or rate) has that name already; name the evaluator "
                            f"otherwise ({', '.join(taken)} are taken)", "evaluators", name)
        return self


class WorkflowConfig(ScoringConfig):
    """A graph as data: `conf/workflow/NAME.yaml`."""

    model_config = ConfigDict(extra="forbid")
    order: ClassVar[tuple[str, ...]] = (
        "name", "description", "state", "nodes", "edges", "routes", "cases", "metrics",
        "factory", "interrupt_before", "interrupt_after", "evaluators", "expected",
        "recursion_limit", "case_timeout_s", "max_checkpoints", "trials")
    name: Text | None = Field(None, description="a label for the workflow")
    description: Text | None = Field(None, description="free text")
    state: mapping(dict[Key, StateSpec], "FIELD: TYPE or FIELD: {type: TYPE, reducer: "
                    "REDUCER}") | None = Field(
        None, description=f"the graph's state: FIELD: TYPE ({', '.join(TYPES)}) or "
                          f"{{type: TYPE, reducer: {' | '.join(REDUCERS)}}}")
    nodes: mapping(dict[NodeName, CallableSpec],
                    "NODE: {_target_: dotted.path, **params}") | None = Field(
        None, description="NODE: {_target_: pkg.fn, **params}, called as fn(state, **params)")
    edges: Annotated[list[Edge], expect("a list of [from, to] pairs")] | None = Field(
        None, description="[from, to] pairs; START and END are the graph's ends")
    routes: mapping(dict[Key, RouteSpec], "SOURCE: {router: {_target_: ...}, to: [...]}") \
        | None = Field(None, description="conditional edges, keyed by the node they leave")
    factory: CallableSpec | None = Field(
        None, description="{_target_: pkg.make_graph}: returns an uncompiled StateGraph; "
                          "excludes state, nodes, edges, routes")
    interrupt_before: Names | None = Field(None, description="breakpoints: node names")
    interrupt_after: Names | None = Field(None, description="breakpoints: node names")
    recursion_limit: Steps | None = Field(  # bounds: wtb_conf.config.guards (null: its default)
        None, description="super-steps a case may take (default 100)")
    case_timeout_s: Seconds | None = Field(
        None, description="seconds a case may run, checked after each step (default 3600)")
    max_checkpoints: Checkpoints | None = Field(
        None, description="checkpoints a run (all its cases) may store (default 10000)")
    trials: Trials | None = Field(
        None, description="times each case runs, each trial its own thread (default 1)")

    @classmethod
    def keys(cls) -> list[str]:  # in the order docs/config.md has them
        return sorted(super().keys(), key=cls.order.index)

    @model_validator(mode="after")
    def _graph(self, info: ValidationInfo) -> WorkflowConfig:
        if is_partial(info):
            return self
        if self.factory is not None:
            for key in ("state", "nodes", "edges", "routes"):
                if getattr(self, key):
                    raise fail(f"a factory builds the whole graph; remove workflow.{key}",
                                "factory")
            return self
        nodes = self.nodes or {}
        if not nodes:
            raise fail("a workflow needs at least one node (or a factory)", "nodes")
        if not self.state:
            raise fail("declare the state fields, e.g. `state: {rows: list}`", "state")

        def endpoint(name: str, *at: str | int) -> None:
            if name not in STARTS + ENDS and name not in nodes:
                raise fail(f"{name!r} is not a node; nodes are {sorted(nodes)} "
                            "(or START / END)", *at)

        entry = False
        for i, (src, dst) in enumerate(self.edges or []):
            endpoint(src, "edges", i)
            endpoint(dst, "edges", i)
            if src in ENDS or dst in STARTS:
                raise fail("edges go from START or a node to a node or END", "edges", i)
            entry |= src in STARTS
        for source, route in (self.routes or {}).items():
            endpoint(source, "routes", source)
            for name in route.to:
                endpoint(name, "routes", source, "to")
            entry |= source in STARTS
        if not entry:
            raise fail("no edge leaves START; add [START, <first node>]", "edges")
        for case, inputs in (self.cases or {}).items():
            for field in inputs:  # LangGraph would drop it without a word
                if field not in self.state:
                    raise fail(f"not a state field; the state has {', '.join(self.state)}",
                                "cases", case, field)
        for key in ("interrupt_before", "interrupt_after"):
            for i, name in enumerate(getattr(self, key) or []):
                if name not in nodes:
                    raise fail(f"{name!r} is not a node; nodes are {sorted(nodes)}", key, i)
        return self


class EnvConfig(Group):
    """The interpreter a job runs in: `conf/env/NAME.yaml`."""

    what = "an env"
    shape = "a mapping with python, packages, index_url, extra_index_urls"
    python: PythonVersion | None = Field(
        None, description='Python version as a string ("3.11"); null: the driver\'s')
    packages: Annotated[list[PackageString],
                        expect("a list of PEP 508 requirement strings, e.g. "
                                "['tabulate==0.9.0']")] | None = Field(
        None, description="PEP 508 requirements from the index, e.g. tabulate==0.9.0")
    index_url: IndexUrl | None = Field(
        None, description="the package index to resolve from")
    extra_index_urls: Annotated[list[IndexUrl], expect("a list of http(s):// URLs")] \
        | None = Field(
        None, description="further package indexes")


class StorageConfig(Group):
    """Where runs, commits and checkpoints go: `conf/storage/NAME.yaml`."""

    what = "storage"
    shape = "a mapping with db_url, blob_root, checkpoints, inline_max"
    required = {"db_url": "an SQLAlchemy URL, e.g. sqlite:///data/wtb.db",
                "blob_root": "the directory of large blobs, e.g. data/blobs",
                "checkpoints": "LangGraph's SQLite file or a postgresql:// URL",
                "inline_max": "bytes up to which a blob lives in the database, e.g. 65536"}
    db_url: DbUrl = Field(None, description="the store's database: sqlite:///PATH or "
                                            "postgresql+psycopg://USER@HOST/DB")
    blob_root: BlobRoot = Field(None, description="blobs larger than inline_max: a directory "
                                                  "or an S3 URL (s3://bucket/prefix)")
    checkpoints: CheckpointsAt = Field(None, description="LangGraph's checkpointer: a SQLite "
                                                         "file or a postgresql:// URL")
    inline_max: Size = Field(
        None, description="blobs up to this many bytes are stored in the database")


def storage_spec(storage: Any, base: Path) -> StorageSpec:
    """The storage group, validated, with its relative paths resolved against `base` (the
    launch dir): the one place a storage config becomes a StorageSpec."""
    spec = check(StorageConfig, storage, "storage", error=StoreError)
    return StorageSpec.resolve(spec.db_url, spec.blob_root, spec.checkpoints, spec.inline_max,
                               base)


class ForkConfig(Group):
    """`+fork.*`: start a job from a checkpoint of an earlier run."""

    what = "fork"
    hint = "+fork.run=RUN +fork.after=NODE"
    shape = f"a mapping, e.g. {hint}"
    required = {"run": "name the run to fork from, e.g. +fork.run=RUN (`wtb runs`)"}
    run: RunId = Field(None, description="the run to fork from: an id or unique prefix")
    checkpoint: CheckpointId | None = Field(
        None, description="a checkpoint id (or prefix): only that case, from there")
    after: Annotated[str, expect("a node name")] | None = Field(
        None, description="a node: every case from the checkpoint right after it first ran")
    set: mapping(dict[Key, Any], "of state fields to values, e.g. +fork.set.FIELD=VALUE") \
        | None = Field(None, description="state updates applied before continuing")
    pause: Annotated[StrictBool, expect("true or false")] = Field(
        False, description="true: copy state and files, then stop (paused)")

    @model_validator(mode="after")
    def _one_start(self) -> ForkConfig:
        if self.checkpoint is not None and self.after is not None:
            raise fail("fork.after is given too; give one of them, not both", "checkpoint")
        return self


class CompareConfig(Group):
    """`compare:` which job of a sweep is best."""

    what = "compare"
    shape = "a mapping {objective: NAME, mode: max | min, baseline: JOB, gates: [GATE, ...]}"
    objective: Annotated[str, expect("the name of a metric, a score, success_rate or "
                                      "pass_rate")] | None = Field(
        None, description="the number that ranks jobs: a metric, a score or a rate")
    mode: one_of("max", "min") = Field("max", description="max or min")
    baseline: Annotated[str | int, expect("a job number, KEY=VALUE ... (the job with those "
                                          "params), or a run or sweep id")] | None = Field(
        None, description="what `wtb compare` tests every job against (--baseline)")
    gates: Annotated[list[str], expect('a list of gates, e.g. ["kept.f1 < baseline - 0.02"]')] \
        | None = Field(None, description="`wtb compare` exits non-zero when one fails (--fail-if)")


class FlagsConfig(Group):
    """The primary config's own switches (docs/config.md)."""

    model_config = ConfigDict(extra="ignore")
    what = "the config"
    shape = "a mapping"
    rerun: Annotated[StrictBool, expect("true or false")] = Field(
        False, description="true: run every job, even one that completed before")
    share_prefixes: Annotated[StrictBool, expect("true or false")] = Field(
        True, description="false: every job runs all its nodes itself")
    trials: Trials | None = Field(
        None, description="times each case runs; null: the workflow's trials, else 1")


GROUPS: dict[str, type[Group]] = {"workflow": WorkflowConfig, "env": EnvConfig,
                                  "storage": StorageConfig, "fork": ForkConfig,
                                  "compare": CompareConfig}

def check_config(cfg: Any, whole: Collection[str] = ("storage",)) -> None:
    """The groups present in a sweep's primary config, before any job starts, and its own
    switches: raises one ConfigError listing every problem. The groups in `whole` are
    checked whole, the others `partial`ly (a sweep may change them in every job)."""
    found = []
    for group, model in [*GROUPS.items(), ("", FlagsConfig)]:
        try:
            if not group:
                data = {k: cfg[k] for k in FlagsConfig.keys() if k in cfg}
            elif group in cfg:
                data = cfg[group]
                data = OmegaConf.to_container(data, resolve=True) \
                    if OmegaConf.is_config(data) else data
            else:
                continue
        except Exception:  # `???`, or what resolves only in a job: the job reports it
            continue
        try:
            check(model, data, group, partial=group not in whole)
        except ConfigError as e:
            found.append(str(e))
    if found:
        raise ConfigError("\n".join(found))
