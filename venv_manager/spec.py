"""What an env is: a normalized spec, validated before anything reaches uv, and its digest."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement

_PYTHON = re.compile(r"^3\.\d{1,2}(\.\d{1,3})?$")
_INDEX = re.compile(r"^https?://[^\s]+$")
# Bounds on what a request may hold: far above any real env, low enough that a request
# cannot make the service parse megabytes or write them into the audit database.
MAX_ITEMS = 500  # packages, constraints, index URLs, labels, a derive's add / remove
MAX_TEXT = 1000  # characters in one requirement, URL, label key or value


class InvalidSpec(ValueError):
    """A spec that is refused before it reaches uv; the message names the offending value."""


def _show(text: object) -> str:
    """repr(text), cut short: a message must name the value, not echo a megabyte of it."""
    shown = repr(text)
    return shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"


def check_size(what: str, items: Collection[str]) -> None:
    """Raise InvalidSpec naming the field `what` if it has too many entries or one is too
    long."""
    if len(items) > MAX_ITEMS:
        raise InvalidSpec(f"{what}: {len(items)} entries; at most {MAX_ITEMS}")
    for i, text in enumerate(items):
        if isinstance(text, str) and len(text) > MAX_TEXT:
            raise InvalidSpec(f"{what}[{i}]: {len(text)} characters (starting "
                              f"{text[:40]!r}); at most {MAX_TEXT}")


def check_labels(labels: Mapping[str, str]) -> None:
    check_size("labels", list(labels))
    check_size("labels (values)", list(labels.values()))


def _requirement(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidSpec(f"{what}: {text!r} is empty; give a PEP 508 requirement like "
                          "'six==1.16.0'")
    if text.lstrip().startswith("-"):
        raise InvalidSpec(f"{what}: {text!r} is an option, not a package; use the spec's "
                          "index_url / extra_index_urls fields for indexes")
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        raise InvalidSpec(f"{what}: {text!r} is not a PEP 508 requirement: {e}") from None
    if req.url:
        raise InvalidSpec(f"{what}: {text!r} is a direct URL or path, not allowed; name a "
                          "package from the index, e.g. 'six==1.16.0'")
    req.name = re.sub(r"[-_.]+", "-", req.name).lower()  # PEP 503 normalized
    return str(req)


@dataclass(frozen=True)
class EnvSpec:
    """An environment's identity: everything but `labels`, which only annotate it."""

    python: str
    packages: tuple[str, ...] = ()
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def create(
        cls,
        python: str,
        packages: Iterable[str] = (),
        index_url: str | None = None,
        extra_index_urls: Iterable[str] = (),
        constraints: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> EnvSpec:
        """Validate and normalize; raises InvalidSpec naming the field and the culprit."""
        if not python:
            raise InvalidSpec("python: missing; give a version like '3.11' or '3.11.7'")
        if not isinstance(python, str) or not _PYTHON.match(python):
            raise InvalidSpec(f"python {_show(python)}: expected a version like '3.11' or "
                              "'3.11.7'")
        packages, constraints = list(packages), list(constraints)
        extra_index_urls = list(extra_index_urls)
        for what, items in (("packages", packages), ("constraints", constraints),
                            ("extra_index_urls", extra_index_urls),
                            ("index_url", [index_url] if index_url else [])):
            check_size(what, items)
        check_labels(labels or {})
        for what, url in [("index_url", index_url)] * bool(index_url) + [
                ("extra_index_urls", u) for u in extra_index_urls]:
            if not isinstance(url, str) or not _INDEX.match(url):
                raise InvalidSpec(f"{what} {_show(url)}: expected an http(s):// URL")
        pkgs = sorted({_requirement(p, "packages") for p in packages})
        cons = sorted({_requirement(c, "constraints") for c in constraints})
        return cls(python, tuple(pkgs), index_url or None, tuple(extra_index_urls), tuple(cons),
                   dict(labels or {}))

    def identity(self) -> dict:
        return {"python": self.python, "packages": list(self.packages),
                "index_url": self.index_url, "extra_index_urls": list(self.extra_index_urls),
                "constraints": list(self.constraints)}

    @property
    def env_id(self) -> str:
        """SHA-256 of the normalized spec (labels left out): names the env and its directory."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_packages(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> EnvSpec:
        """A derived spec: `remove` names packages (any version) to drop, `add` requirements."""
        add, remove = list(add), list(remove)
        check_size("add", add)
        check_size("remove", remove)
        for text in add:  # named as the field they came in, not as the merged packages
            _requirement(text, "add")
        gone = {re.sub(r"[-_.]+", "-", n).lower() for n in remove}
        kept = [p for p in self.packages if Requirement(p).name not in gone]
        return EnvSpec.create(self.python, [*kept, *add], self.index_url, self.extra_index_urls,
                              self.constraints, self.labels)
