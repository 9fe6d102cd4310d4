"""The base of every config group's model (`Group`: a mapping of known keys, `CallableSpec`:
a `{_target_: ...}` mapping) and `check`, which validates a value as one of them. The groups
themselves are in wtb_conf.config.models; the value types and their messages in
wtb_conf.config.values."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from wtb_conf.config.values import (
    MISSING,
    ConfigError,
    DottedPath,
    fail,
    is_partial,
    problems,
    show,
)


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
            raise fail(f"expected {cls.shape}, got {show(data)}")
        if cls.model_config.get("extra") == "forbid":
            known = cls.keys()
            for key in data:
                if key not in known:
                    raise fail(f"unknown key; {cls.what} has {', '.join(known)}"
                                + (f", e.g. {cls.hint}" if cls.hint else ""), key)
        for key, why in cls.required.items():
            if data.get(key) in (None, "") and not is_partial(info):
                raise fail(f"missing; {why}", key)
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
                                             and not is_partial(info)):
            raise fail(f"expected {cls.shape}, got {show(data)}")
        return data

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


M = TypeVar("M", bound=Group)


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
