"""The values a config key may take, as pydantic annotated types, each with the message
that says what would be valid: the parts wtb_conf.config.models builds the config groups' models
from. A message is `fail(text, *key path)`; `expect(valid)` says what a value of the wrong
type or shape should have been."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any, Literal

from hydra.errors import CompactHydraException
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from wtb_conf.storage import is_postgres, sqlalchemy_url

# `file` / `text_file`: a str naming a case input file, checked before the sweep starts
TYPES = ("any", "str", "int", "float", "bool", "list", "dict", "file", "text_file")
REDUCERS = ("append", "merge")
STARTS, ENDS = ("START", "__start__"), ("END", "__end__")  # as written, and LangGraph's own
MISSING = "???"  # Hydra's mandatory value, not given yet


class ConfigError(CompactHydraException, ValueError):
    """Config values refused by their group's model: one line per problem, each naming the key
    and what would be valid. (Compact: Hydra prints the message alone.)"""


def show(value: Any) -> str:
    if value == MISSING:
        return "??? (no value given)"
    shown = repr(value)
    return shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"


def fail(text: str, *at: str | int) -> PydanticCustomError:
    """An error whose message is `text`; `at`: the key path below the value validated."""
    return PydanticCustomError("wtb", "{text}", {"text": text, "at": at})


def is_partial(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("partial"))


def expect(valid: str) -> WrapValidator:
    """When the value itself has the wrong type or shape, say what was expected (a problem
    deeper inside it is reported at its own key)."""

    def check(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as e:
            if any(not err["loc"] and err["type"] != "wtb" for err in e.errors()):
                raise fail(f"expected {valid}, got {show(value)}") from None
            raise

    return WrapValidator(check)


def one_of(*options: str) -> Any:
    def check(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise fail(f"{show(value)} is not one of {', '.join(options)}") from None

    return Annotated[Literal[options], WrapValidator(check)]


def json_schema(**schema: Any) -> WithJsonSchema:
    return WithJsonSchema(schema)


def _dotted(value: Any) -> Any:
    if not isinstance(value, str) or not all(p.isidentifier() for p in value.split(".")):
        raise fail(f"expected a dotted import path like 'pkg.module.func', got {show(value)}")
    return value


def _node_name(name: str) -> str:
    if name in STARTS + ENDS:
        raise fail(f"{name} is reserved; rename the node")
    return name


def _evaluator_name(name: str) -> str:
    if "/" in name:
        raise fail(f"names may not contain '/'; e.g. {name.replace('/', '_')!r}")
    return name


def _text(value: Any) -> Any:  # free text: `name: 2024` is a name too
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _list_of_names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


DottedPath = Annotated[str, BeforeValidator(_dotted),
                       json_schema(type="string", pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")]
Text = Annotated[str, BeforeValidator(_text), expect("free text")]
Key = Annotated[str, expect("a name (a string)")]
NodeRef = Annotated[str, expect("a node name (or START / END)")]
Names = Annotated[list[NodeRef], BeforeValidator(_list_of_names), expect("a list of node names"),
                  json_schema(anyOf=[{"type": "string"},
                                 {"type": "array", "items": {"type": "string"}}])]


def _python_version(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML and Hydra read 3.10 as the number 3.1
        driver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        raise fail(f"{value!r} is a number; write the version as a string: python: "
                    f"\"{driver}\" in YAML, env.python='{driver}' on the command line")
    parts = value.split(".") if isinstance(value, str) else []
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts) or parts[0] != "3":
        raise fail(f"{show(value)} is not a Python version; write it like \"3.11\" or "
                    "\"3.11.7\" (or null: the driver's)")
    return value


def _requirement(value: Any) -> Any:
    example = "e.g. 'tabulate==0.9.0'"
    if not isinstance(value, str) or not value.strip():
        raise fail(f"expected a PEP 508 requirement string, got {show(value)}; {example}")
    if value.lstrip().startswith("-"):
        raise fail(f"{show(value)} is an option, not a package; name a package from the "
                    f"index ({example}), and indexes with env.index_url / extra_index_urls")
    try:
        req = Requirement(value)
    except InvalidRequirement as e:
        why = str(e).splitlines()[0]  # the rest draws a caret under the culprit
        raise fail(f"{show(value)} is not a PEP 508 requirement ({why}); {example}") from None
    if req.url:
        raise fail(f"{show(value)} is a direct URL or path; name a package from the index, "
                    f"{example}")
    return value


def _index_url(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) \
            or any(c.isspace() for c in value):
        raise fail(f"expected an http(s):// URL, got {show(value)}")
    return value


def _interpolation(value: Any) -> bool:
    """`${oc.env:VAR,default}` as written in a file: a config is checked resolved, so only a
    file read as it is (by an editor, or the shipped files' test) still has one."""
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def _url(value: str) -> str:
    """A URL for a message, without its password."""
    from wtb_conf.storage import redact

    return show(redact(value)) if "://" in value else show(value)


STORE_URLS = "sqlite:///PATH (e.g. sqlite:///data/wtb.db) or postgresql+psycopg://USER@HOST/DB"


def _db_url(value: Any) -> Any:
    if _interpolation(value):
        return value
    if not isinstance(value, str) or "://" not in value:
        # SQLAlchemy would take a bare word for nothing; open_store for a path
        raise fail(f"{show(value)} is not a database URL; give an SQLAlchemy URL, "
                    "e.g. sqlite:///data/wtb.db or postgresql+psycopg://USER@HOST/DB")
    dialect, _, driver = value.partition("://")[0].lower().partition("+")
    if dialect == "sqlite":
        return value
    if dialect in ("postgresql", "postgres"):
        if driver in ("", "psycopg"):
            return sqlalchemy_url(value)  # a libpq URL gets psycopg's driver name
        raise fail(f"{_url(value)} names the driver {driver!r}; wtb_conf reaches PostgreSQL "
                   "through psycopg (3): postgresql+psycopg://USER@HOST/DB")
    raise fail(f"{_url(value)} is not a SQLite or PostgreSQL URL; give {STORE_URLS}")


def _checkpoints(value: Any) -> Any:
    if _interpolation(value) or isinstance(value, str) and value.strip() and (
            "://" not in value or is_postgres(value)):
        return value
    what = _url(value) if isinstance(value, str) else show(value)
    raise fail(f"{what} is not a SQLite file path or a postgresql:// URL; give a path like "
               "data/checkpoints.db or postgresql://USER@HOST/DB")


BLOB_SCHEMES = ("s3", "s3a", "file")  # object stores whose PUT is atomic, and paths


def _blob_root(value: Any) -> Any:
    example = "a directory like data/blobs (shared by every node) or s3://bucket/prefix"
    if _interpolation(value):
        return value
    if not isinstance(value, str) or not value.strip():
        raise fail(f"expected a directory path or an s3:// URL, got {show(value)}; {example}")
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    if scheme.lower() not in BLOB_SCHEMES:
        # other fsspec file systems (sftp, hdfs, local://, chained caches) write an object in
        # place: a killed commit would leave part of a blob under its final name
        raise fail(f"{show(value)}: blobs can go to a directory or to S3 (s3://), whose "
                   f"uploads are whole or nothing; not {scheme!r}; {example}")
    if not rest.strip("/"):
        raise fail(f"{show(value)} names no bucket or directory; {example}")
    return value


def _size(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(f"{show(value)} is not a size; give the bytes up to which a blob lives in "
                    "the database, an integer >= 0 (default 65536)")
    return value


def id_override(key: str, hex_id: str, typed: bool = False) -> str:
    """`+KEY=ID` for Hydra's command line. Ids wtb makes start with a letter; an older store's
    may be digits and one e, which Hydra reads as a number, so it is quoted: for an argv
    element (`+fork.run='ID'`), or, `typed`, for a person to type in a shell
    (`+fork.run="'ID'"`)."""
    if hex_id[:1].isalpha():
        return f"+{key}={hex_id}"
    return f"+{key}=\"'{hex_id}'\"" if typed else f"+{key}='{hex_id}'"


def _hex_id(what: str, key: str, extra: str = "",
            also: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """Ids are hexadecimal (checkpoint ids have dashes too); Hydra reads +fork.run=12345678
    as a number."""

    def check(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, float):  # the digits the user typed are gone
            raise fail(f"the id was read as the number {value!r} (digits and one e look like "
                       f"one); quote it: +{key}=\"'12e34'\" on the command line, '12e34' "
                       "in YAML")
        if value in also or isinstance(value, str) and value and all(
                c in "0123456789abcdef" + extra for c in value.lower()):
            return value
        raise fail(f"{show(value)} is not {what}")

    return check



NodeName = Annotated[Key, AfterValidator(_node_name)]
EvaluatorName = Annotated[Key, AfterValidator(_evaluator_name)]
PythonVersion = Annotated[str, BeforeValidator(_python_version),
                          json_schema(type="string", pattern=r"^3\.\d+(\.\d+)?$")]
PackageString = Annotated[str, BeforeValidator(_requirement)]
IndexUrl = Annotated[str, BeforeValidator(_index_url)]
DbUrl = Annotated[str, BeforeValidator(_db_url), json_schema(type="string", pattern="://")]
CheckpointsAt = Annotated[str, BeforeValidator(_checkpoints), json_schema(type="string")]
BlobRoot = Annotated[str, BeforeValidator(_blob_root), json_schema(type="string")]
Size = Annotated[int, BeforeValidator(_size), json_schema(type="integer", minimum=0)]

RunId = Annotated[str, BeforeValidator(_hex_id(
    "a run id; give an id or a unique prefix of one (hexadecimal: `wtb runs`), or last",
    "fork.run", also=("last",))), json_schema(type=["string", "integer"])]
CheckpointId = Annotated[str, BeforeValidator(_hex_id(
    "a checkpoint id; give one or a unique prefix of one (hexadecimal and dashes: "
    "`wtb show RUN`)", "fork.checkpoint", extra="-")), json_schema(type=["string", "integer"])]


def mapping(value: type, valid: str) -> Any:
    return Annotated[value, expect(f"a mapping {valid}")]


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
            text = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {show(err.get('input'))}"
        line = f"{_key(group, loc)}: {text}"
        if line not in out:
            out.append(line)
    return out
