"""The config groups `workflow`, `env`, `storage`, `fork` and `compare`, each described once as a
pydantic model: every bad value is refused the same way, as `<group>.<key path>: <what is
wrong>; <what would be valid>` (`workflow.edges[1]: 'dubble' is not a node; nodes are [...]`),
and `wtb schema` writes the JSON Schemas an editor checks the YAML files against.

The models check shapes, types and names within a group. What needs more than the config
(importing a `_target_`, a run in the store, the driver's Python) stays with the code that
needs it, and reports key paths the same way. Every key is documented in docs/config.md.

Two modes: whole (a job's config: required keys, routes to unknown nodes), and `partial`, for
a group of the sweep's primary config that a sweep may change in every job: only its wrong
values, since a variant may add the node an edge names or set the `_target_` its base leaves
`???` (wtb_conf.sweep decides which)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from hydra.errors import CompactHydraException
from omegaconf import OmegaConf
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from wtb_conf.compare import RATES

TYPES = ("any", "str", "int", "float", "bool", "list", "dict")
REDUCERS = ("append", "merge")
STARTS, ENDS = ("START", "__start__"), ("END", "__end__")  # as written, and LangGraph's own
MISSING = "???"  # Hydra's mandatory value, not given yet
DRAFT = "http://json-schema.org/draft-07/schema#"
SCHEMA_DIR = Path(".wtb/schemas")  # suggested default of `wtb schema --out`


class ConfigError(CompactHydraException, ValueError):
    """Config values refused by their group's model: one line per problem, each naming the key
    and what would be valid. (Compact: Hydra prints the message alone.)"""


def _show(value: Any) -> str:
    if value == MISSING:
        return "??? (no value given)"
    shown = repr(value)
    return shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"


def _fail(text: str, *at: str | int) -> PydanticCustomError:
    """An error whose message is `text`; `at`: the key path below the value validated."""
    return PydanticCustomError("wtb", "{text}", {"text": text, "at": at})


def _partial(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("partial"))


def _expect(valid: str) -> WrapValidator:
    """When the value itself has the wrong type or shape, say what was expected (a problem
    deeper inside it is reported at its own key)."""

    def check(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as e:
            if any(not err["loc"] and err["type"] != "wtb" for err in e.errors()):
                raise _fail(f"expected {valid}, got {_show(value)}") from None
            raise

    return WrapValidator(check)


def _one_of(*options: str) -> Any:
    def check(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise _fail(f"{_show(value)} is not one of {', '.join(options)}") from None

    return Annotated[Literal[options], WrapValidator(check)]


def _schema(**schema: Any) -> WithJsonSchema:
    return WithJsonSchema(schema)


def _dotted(value: Any) -> Any:
    if not isinstance(value, str) or not all(p.isidentifier() for p in value.split(".")):
        raise _fail(f"expected a dotted import path like 'pkg.module.func', got {_show(value)}")
    return value


def _node_name(name: str) -> str:
    if name in STARTS + ENDS:
        raise _fail(f"{name} is reserved; rename the node")
    return name


def _evaluator_name(name: str) -> str:
    if "/" in name:
        raise _fail(f"names may not contain '/'; e.g. {name.replace('/', '_')!r}")
    return name


def _text(value: Any) -> Any:  # free text: `name: 2024` is a name too
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _list_of_names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


DottedPath = Annotated[str, BeforeValidator(_dotted),
                       _schema(type="string", pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")]
Text = Annotated[str, BeforeValidator(_text), _expect("free text")]
Key = Annotated[str, _expect("a name (a string)")]
NodeRef = Annotated[str, _expect("a node name (or START / END)")]
Names = Annotated[list[NodeRef], BeforeValidator(_list_of_names), _expect("a list of node names"),
                  _schema(anyOf=[{"type": "string"},
                                 {"type": "array", "items": {"type": "string"}}])]


def _python_version(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML and Hydra read 3.10 as the number 3.1
        driver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        raise _fail(f"{value!r} is a number; write the version as a string: python: "
                    f"\"{driver}\" in YAML, env.python='{driver}' on the command line")
    parts = value.split(".") if isinstance(value, str) else []
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts) or parts[0] != "3":
        raise _fail(f"{_show(value)} is not a Python version; write it like \"3.11\" or "
                    "\"3.11.7\" (or null: the driver's)")
    return value


def _requirement(value: Any) -> Any:
    example = "e.g. 'tabulate==0.9.0'"
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"expected a PEP 508 requirement string, got {_show(value)}; {example}")
    if value.lstrip().startswith("-"):
        raise _fail(f"{_show(value)} is an option, not a package; name a package from the "
                    f"index ({example}), and indexes with env.index_url / extra_index_urls")
    try:
        req = Requirement(value)
    except InvalidRequirement as e:
        why = str(e).splitlines()[0]  # the rest draws a caret under the culprit
        raise _fail(f"{_show(value)} is not a PEP 508 requirement ({why}); {example}") from None
    if req.url:
        raise _fail(f"{_show(value)} is a direct URL or path; name a package from the index, "
                    f"{example}")
    return value


def _index_url(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) \
            or any(c.isspace() for c in value):
        raise _fail(f"expected an http(s):// URL, got {_show(value)}")
    return value


def _db_url(value: Any) -> Any:
    if not isinstance(value, str) or "://" not in value:
        # SQLAlchemy would take a bare word for nothing; open_store for a path
        raise _fail(f"{_show(value)} is not a database URL; give an SQLAlchemy URL, "
                    "e.g. sqlite:///data/wtb.db")
    return value


def _size(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(f"{_show(value)} is not a size; give the bytes up to which a blob lives in "
                    "the database, an integer >= 0 (default 65536)")
    return value


def _hex_id(what: str, extra: str = "", also: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """Ids are hexadecimal (checkpoint ids have dashes too); Hydra reads +fork.run=12345678
    as a number."""

    def check(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value in also or isinstance(value, str) and value and all(
                c in "0123456789abcdef" + extra for c in value.lower()):
            return value
        raise _fail(f"{_show(value)} is not {what}")

    return check


def _add_required(schema: dict[str, Any], cls: type[Group]) -> None:
    """The JSON Schema lists the keys `required` names (the validator checks them, so that a
    partial check can let them be)."""
    if cls.required:
        schema["required"] = list(cls.required)
        for key in cls.required:
            schema.get("properties", {}).get(key, {}).pop("default", None)


class Group(BaseModel):
    """A mapping of known keys; errors name the key and what would be valid."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_add_required)
    what: ClassVar[str]  # "unknown key; <what> has ..."
    shape: ClassVar[str]  # what a valid value looks like as a whole
    required: ClassVar[dict[str, str]] = {}  # key -> what to give when it is missing
    hint: ClassVar[str] = ""  # an example, after the list of keys

    @classmethod
    def keys(cls) -> list[str]:
        return [f.alias or name for name, f in cls.model_fields.items()]

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            raise _fail(f"expected {cls.shape}, got {_show(data)}")
        if cls.model_config.get("extra") == "forbid":
            known = cls.keys()
            for key in data:
                if key not in known:
                    raise _fail(f"unknown key; {cls.what} has {', '.join(known)}"
                                + (f", e.g. {cls.hint}" if cls.hint else ""), key)
        for key, why in cls.required.items():
            if data.get(key) in (None, "") and not _partial(info):
                raise _fail(f"missing; {why}", key)
        return data


class CallableSpec(Group):
    """`{_target_: dotted.path, **params}`: the params are passed to the callable."""

    model_config = ConfigDict(extra="allow")
    shape = "a mapping with a _target_ (a dotted import path)"
    required = {"_target_": shape}
    target: DottedPath = Field(None, alias="_target_",
                               description="dotted import path of the callable")

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping) or (data.get("_target_") is None
                                             and not _partial(info)):
            raise _fail(f"expected {cls.shape}, got {_show(data)}")
        return data

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StateField(Group):
    what = "a state field"
    shape = f"a type name ({', '.join(TYPES)}) or {{type: TYPE, reducer: REDUCER}}"
    type: _one_of(*TYPES) = "any"
    reducer: _one_of(*REDUCERS) | None = None


def _short_field(value: Any) -> Any:  # `rows: list` is `rows: {type: list}`
    return {"type": value or "any"} if isinstance(value, str) or value is None else value


StateSpec = Annotated[StateField, BeforeValidator(_short_field), _schema(anyOf=[
    {"enum": [*TYPES, None]},
    {"type": "object", "additionalProperties": False,
     "properties": {"type": {"enum": list(TYPES)}, "reducer": {"enum": [*REDUCERS, None]}}}])]
Edge = Annotated[list[NodeRef], Field(min_length=2, max_length=2), _expect("a pair [from, to]"),
                 _schema(type="array", items={"type": "string"}, minItems=2, maxItems=2)]


class RouteSpec(Group):
    what = "a route"
    shape = "{router: {_target_: ...}, to: [node, ...]}"
    required = {"router": "the callable returning the next node's name: {_target_: ...}",
                "to": "the names the router may return: [node, ...] (or END)"}
    router: CallableSpec = Field(None, description="fn(state, **params) -> a name in `to`")
    to: Annotated[list[NodeRef], Field(min_length=1),
                  _expect("a non-empty list of node names (or END)")] = Field(
        None, description="the names the router may return: nodes or END")


def _mapping(value: type, valid: str) -> Any:
    return Annotated[value, _expect(f"a mapping {valid}")]


class ScoringConfig(Group):
    """The keys scoring reads (`wtb evaluate` checks these alone)."""

    model_config = ConfigDict(extra="ignore")
    what = "a workflow"
    shape = "a mapping of workflow keys (docs/config.md)"
    cases: _mapping(dict[Key, _mapping(dict[Key, Any], "FIELD: value (the case's input)")],
                    "CASE: {field: value, ...}") | None = Field(
        None, description="CASE: the initial state of that case; each runs as its own thread")
    metrics: _mapping(dict[Key, Annotated[str, _expect("a dotted path into the final state, "
                                                        "e.g. rows_out")]],
                      "METRIC: state.key.path") | None = Field(
        None, description="METRIC: dotted path of a key in each case's final state")
    evaluators: _mapping(dict[Annotated[Key, AfterValidator(_evaluator_name)], CallableSpec],
                         "NAME: {_target_: ...}") | None = Field(
        None, description="NAME: {_target_: ..., **params}: scores each case after it ends")
    expected: _mapping(dict[Key, Any], "CASE: reference value") | None = Field(
        None, description="CASE: the reference value for evaluators taking `expected`")

    @model_validator(mode="after")
    def _names(self, info: ValidationInfo) -> ScoringConfig:
        if _partial(info):
            return self
        for case in self.expected or {}:
            if self.cases and case not in self.cases:
                raise _fail(f"not a case; cases are {sorted(self.cases)}", "expected", case)
        taken = [*(self.metrics or {}), *RATES]
        for name in self.evaluators or {}:
            if name in taken:  # one column of the comparison per name
                raise _fail(f"a metric (or rate) has that name already; name the evaluator "
                            f"otherwise ({', '.join(taken)} are taken)", "evaluators", name)
        return self


class WorkflowConfig(ScoringConfig):
    """A graph as data: `conf/workflow/NAME.yaml`."""

    model_config = ConfigDict(extra="forbid")
    order: ClassVar[tuple[str, ...]] = (
        "name", "description", "state", "nodes", "edges", "routes", "cases", "metrics",
        "factory", "interrupt_before", "interrupt_after", "evaluators", "expected")
    name: Text | None = Field(None, description="a label for the workflow")
    description: Text | None = Field(None, description="free text")
    state: _mapping(dict[Key, StateSpec], "FIELD: TYPE or FIELD: {type: TYPE, reducer: "
                    "REDUCER}") | None = Field(
        None, description=f"the graph's state: FIELD: TYPE ({', '.join(TYPES)}) or "
                          f"{{type: TYPE, reducer: {' | '.join(REDUCERS)}}}")
    nodes: _mapping(dict[Annotated[Key, AfterValidator(_node_name)], CallableSpec],
                    "NODE: {_target_: dotted.path, **params}") | None = Field(
        None, description="NODE: {_target_: pkg.fn, **params}, called as fn(state, **params)")
    edges: Annotated[list[Edge], _expect("a list of [from, to] pairs")] | None = Field(
        None, description="[from, to] pairs; START and END are the graph's ends")
    routes: _mapping(dict[Key, RouteSpec], "SOURCE: {router: {_target_: ...}, to: [...]}") \
        | None = Field(None, description="conditional edges, keyed by the node they leave")
    factory: CallableSpec | None = Field(
        None, description="{_target_: pkg.make_graph}: returns an uncompiled StateGraph; "
                          "excludes state, nodes, edges, routes")
    interrupt_before: Names | None = Field(None, description="breakpoints: node names")
    interrupt_after: Names | None = Field(None, description="breakpoints: node names")

    @classmethod
    def keys(cls) -> list[str]:  # in the order docs/config.md has them
        return sorted(super().keys(), key=cls.order.index)

    @model_validator(mode="after")
    def _graph(self, info: ValidationInfo) -> WorkflowConfig:
        if _partial(info):
            return self
        if self.factory is not None:
            for key in ("state", "nodes", "edges", "routes"):
                if getattr(self, key):
                    raise _fail(f"a factory builds the whole graph; remove workflow.{key}",
                                "factory")
            return self
        nodes = self.nodes or {}
        if not nodes:
            raise _fail("a workflow needs at least one node (or a factory)", "nodes")
        if not self.state:
            raise _fail("declare the state fields, e.g. `state: {rows: list}`", "state")

        def endpoint(name: str, *at: str | int) -> None:
            if name not in STARTS + ENDS and name not in nodes:
                raise _fail(f"{name!r} is not a node; nodes are {sorted(nodes)} "
                            "(or START / END)", *at)

        entry = False
        for i, (src, dst) in enumerate(self.edges or []):
            endpoint(src, "edges", i)
            endpoint(dst, "edges", i)
            if src in ENDS or dst in STARTS:
                raise _fail("edges go from START or a node to a node or END", "edges", i)
            entry |= src in STARTS
        for source, route in (self.routes or {}).items():
            endpoint(source, "routes", source)
            for name in route.to:
                endpoint(name, "routes", source, "to")
            entry |= source in STARTS
        if not entry:
            raise _fail("no edge leaves START; add [START, <first node>]", "edges")
        for case, inputs in (self.cases or {}).items():
            for field in inputs:  # LangGraph would drop it without a word
                if field not in self.state:
                    raise _fail(f"not a state field; the state has {', '.join(self.state)}",
                                "cases", case, field)
        for key in ("interrupt_before", "interrupt_after"):
            for i, name in enumerate(getattr(self, key) or []):
                if name not in nodes:
                    raise _fail(f"{name!r} is not a node; nodes are {sorted(nodes)}", key, i)
        return self


class EnvConfig(Group):
    """The interpreter a job runs in: `conf/env/NAME.yaml`."""

    what = "an env"
    shape = "a mapping with python, packages, index_url, extra_index_urls"
    python: Annotated[str, BeforeValidator(_python_version),
                      _schema(type="string", pattern=r"^3\.\d+(\.\d+)?$")] | None = Field(
        None, description='Python version as a string ("3.11"); null: the driver\'s')
    packages: Annotated[list[Annotated[str, BeforeValidator(_requirement)]],
                        _expect("a list of PEP 508 requirement strings, e.g. "
                                "['tabulate==0.9.0']")] | None = Field(
        None, description="PEP 508 requirements from the index, e.g. tabulate==0.9.0")
    index_url: Annotated[str, BeforeValidator(_index_url)] | None = Field(
        None, description="the package index to resolve from")
    extra_index_urls: Annotated[list[Annotated[str, BeforeValidator(_index_url)]],
                                _expect("a list of http(s):// URLs")] | None = Field(
        None, description="further package indexes")


class StorageConfig(Group):
    """Where runs, commits and checkpoints go: `conf/storage/NAME.yaml`."""

    what = "storage"
    shape = "a mapping with db_url, blob_root, checkpoints, inline_max"
    required = {"db_url": "an SQLAlchemy URL, e.g. sqlite:///data/wtb.db",
                "blob_root": "the directory of large blobs, e.g. data/blobs",
                "checkpoints": "LangGraph's SQLite file, e.g. data/checkpoints.db",
                "inline_max": "bytes up to which a blob lives in the database, e.g. 65536"}
    db_url: Annotated[str, BeforeValidator(_db_url),
                      _schema(type="string", pattern="://")] = Field(
        None, description="SQLAlchemy URL of the store's database")
    blob_root: Annotated[str, _expect("a directory path")] = Field(
        None, description="directory of blobs larger than inline_max")
    checkpoints: Annotated[str, _expect("a file path")] = Field(
        None, description="SQLite file of LangGraph's SqliteSaver")
    inline_max: Annotated[int, BeforeValidator(_size), _schema(type="integer", minimum=0)] \
        = Field(None, description="blobs up to this many bytes are stored in the database")


RunId = Annotated[str, BeforeValidator(_hex_id(
    "a run id; give an id or a unique prefix of one (hexadecimal: `wtb runs`), or last",
    also=("last",))), _schema(type=["string", "integer"])]
CheckpointId = Annotated[str, BeforeValidator(_hex_id(
    "a checkpoint id; give one or a unique prefix of one (hexadecimal and dashes: "
    "`wtb show RUN`)", extra="-")), _schema(type=["string", "integer"])]


class ForkConfig(Group):
    """`+fork.*`: start a job from a checkpoint of an earlier run."""

    what = "fork"
    hint = "+fork.run=RUN +fork.after=NODE"
    shape = f"a mapping, e.g. {hint}"
    required = {"run": "name the run to fork from, e.g. +fork.run=RUN (`wtb runs`)"}
    run: RunId = Field(None, description="the run to fork from: an id or unique prefix")
    checkpoint: CheckpointId | None = Field(
        None, description="a checkpoint id (or prefix): only that case, from there")
    after: Annotated[str, _expect("a node name")] | None = Field(
        None, description="a node: every case from the checkpoint right after it first ran")
    set: _mapping(dict[Key, Any], "of state fields to values, e.g. +fork.set.FIELD=VALUE") \
        | None = Field(None, description="state updates applied before continuing")
    pause: Annotated[StrictBool, _expect("true or false")] = Field(
        False, description="true: copy state and files, then stop (paused)")

    @model_validator(mode="after")
    def _one_start(self) -> ForkConfig:
        if self.checkpoint is not None and self.after is not None:
            raise _fail("fork.after is given too; give one of them, not both", "checkpoint")
        return self


class CompareConfig(Group):
    """`compare:` which job of a sweep is best."""

    what = "compare"
    shape = "a mapping {objective: NAME, mode: max | min}"
    objective: Annotated[str, _expect("the name of a metric, a score, success_rate or "
                                      "pass_rate")] | None = Field(
        None, description="the number that ranks jobs: a metric, a score or a rate")
    mode: _one_of("max", "min") = Field("max", description="max or min")


class FlagsConfig(Group):
    """The primary config's own switches (docs/config.md)."""

    model_config = ConfigDict(extra="ignore")
    what = "the config"
    shape = "a mapping"
    rerun: Annotated[StrictBool, _expect("true or false")] = Field(
        False, description="true: run every job, even one that completed before")
    share_prefixes: Annotated[StrictBool, _expect("true or false")] = Field(
        True, description="false: every job runs all its nodes itself")


GROUPS: dict[str, type[Group]] = {"workflow": WorkflowConfig, "env": EnvConfig,
                                  "storage": StorageConfig, "fork": ForkConfig,
                                  "compare": CompareConfig}
M = TypeVar("M", bound=Group)


def _key(group: str, loc: Any) -> str:
    key = group + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    return key.lstrip(".")


def problems(error: ValidationError, group: str) -> list[str]:
    """`<group>.<key path>: <what is wrong>; <what would be valid>`, one per problem."""
    out: list[str] = []
    for err in error.errors(include_url=False):
        ctx = err.get("ctx") or {}
        loc = [p for p in err["loc"] if p != "[key]"] + list(ctx.get("at") or ())
        if err["type"] == "wtb":
            text = ctx["text"]
        else:  # a check without a message of ours: pydantic's, with the value
            text = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {_show(err.get('input'))}"
        line = f"{_key(group, loc)}: {text}"
        if line not in out:
            out.append(line)
    return out


def _without_missing(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_missing(v) for k, v in data.items() if v != MISSING}
    return data


def check(model: type[M], data: Any, group: str, *,
          error: Callable[[str], BaseException] = ConfigError, partial: bool = False) -> M:
    """`data` (a plain value or an OmegaConf container) validated as `model`; raises
    `error(message)` naming every key at fault under `group`."""
    if OmegaConf.is_config(data):
        data = OmegaConf.to_container(data, resolve=True)
    if partial:
        data = _without_missing(data)
    try:
        return model.model_validate(data, context={"partial": partial})
    except ValidationError as e:
        raise error("\n".join(problems(e, group))) from None


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


# -- JSON Schemas for editors (`wtb schema`) -----------------------------------------------


def _optional(schema: Any) -> Any:
    """`schema` with no required keys: a variant or an experiment overlays a few keys."""
    if isinstance(schema, dict):
        return {k: _optional(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_optional(v) for v in schema]
    return schema


def _draft7(schema: dict[str, Any]) -> dict[str, Any]:
    """Draft 7, which every YAML language server reads: definitions under `definitions`."""
    defs = schema.pop("$defs", None)
    return {"$schema": DRAFT, **schema, **({"definitions": defs} if defs else {})}


def json_schemas() -> dict[str, dict[str, Any]]:
    """name -> JSON Schema (draft 7): `workflow`, `variant`, `env`, `storage` (the files of
    those config groups) and `experiment` (experiments/*.yaml, `# @package _global_`)."""
    refs = "#/definitions/{model}"
    out: dict[str, dict[str, Any]] = {}
    for name, model, files in (("workflow", WorkflowConfig, "conf/workflow/*.yaml"),
                               ("env", EnvConfig, "conf/env/*.yaml"),
                               ("storage", StorageConfig, "conf/storage/*.yaml")):
        out[name] = {**_draft7(model.model_json_schema(ref_template=refs)),
                     "title": f"wtb_conf {name} ({files})"}
    out["variant"] = {**_optional(out["workflow"]),
                      "title": "wtb_conf variant (conf/variant/*.yaml, # @package workflow)"}
    models = [*GROUPS.values(), FlagsConfig]
    found, defs = models_json_schema([(m, "validation") for m in models], ref_template=refs)
    flags = defs["$defs"].pop(FlagsConfig.__name__)["properties"]
    out["experiment"] = _optional(_draft7({
        "title": "wtb_conf experiment (experiments/*.yaml, # @package _global_)",
        "type": "object",
        "properties": {
            "defaults": {"type": "array",
                         "description": "Hydra's defaults list: - override /workflow: NAME"},
            "hydra": {"type": "object", "description": "Hydra settings: hydra.sweeper.params"},
            **{g: found[(m, "validation")] for g, m in GROUPS.items()},
            **flags,
        },
        **defs,
    }))
    return out


def write_schemas(out_dir: Path) -> list[Path]:
    """Write `<name>.schema.json` for each of json_schemas() into `out_dir`; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in json_schemas().items():
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        paths.append(path)
    return paths
