"""What an env is: a normalized spec, validated before anything reaches uv, and its digest."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement

_PYTHON = re.compile(r"^3\.\d{1,2}(\.\d{1,3})?$")
_INDEX = re.compile(r"^https?://[^\s]+$")


class InvalidSpec(ValueError):
    """A spec that is refused before it reaches uv; the message names the offending value."""


def _requirement(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidSpec(f"{what} {text!r}: empty; give a PEP 508 requirement like 'six==1.16.0'")
    if text.lstrip().startswith("-"):
        raise InvalidSpec(f"{what} {text!r}: options are not packages; use the spec's index_url "
                          "/ extra_index_urls fields for indexes")
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        raise InvalidSpec(f"{what} {text!r} is not a PEP 508 requirement: {e}") from None
    if req.url:
        raise InvalidSpec(f"{what} {text!r}: direct URLs and paths are not allowed; name a "
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
        """Validate and normalize; raises InvalidSpec naming the culprit."""
        if not isinstance(python, str) or not _PYTHON.match(python):
            raise InvalidSpec(f"python {python!r}: expected a version like '3.11' or '3.11.7'")
        for url in [index_url] * bool(index_url) + list(extra_index_urls):
            if not _INDEX.match(url):
                raise InvalidSpec(f"index URL {url!r}: expected an http(s):// URL")
        pkgs = sorted({_requirement(p, "package") for p in packages})
        cons = sorted({_requirement(c, "constraint") for c in constraints})
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
        gone = {re.sub(r"[-_.]+", "-", n).lower() for n in remove}
        kept = [p for p in self.packages if Requirement(p).name not in gone]
        return EnvSpec.create(self.python, [*kept, *add], self.index_url, self.extra_index_urls,
                              self.constraints, self.labels)
