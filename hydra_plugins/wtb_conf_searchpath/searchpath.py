"""Puts the launch directory's project configs on wtb_conf's search path.

- `<cwd>/conf/` (workflow/, variant/, env/, storage/ groups) ahead of the packaged defaults,
  so a project's configs are found without --config-dir and may shadow the packaged ones
  (a YAML error in one is a message naming file and line, not a traceback);
- `<cwd>/experiments/` as the `experiment` group, so `+experiment=NAME` loads
  `experiments/NAME.yaml`.

Hydra loads every plugin for every app; this one only touches wtb_conf's search path.
"""

from __future__ import annotations

import importlib.util
import os

import yaml
from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.errors import ConfigCompositionException
from hydra.plugins.config_source import ConfigResult
from hydra.plugins.search_path_plugin import SearchPathPlugin

PACKAGED = "pkg://wtb_conf.conf"
_PACKAGED_DIR = os.path.realpath(
    os.path.join(os.path.dirname(importlib.util.find_spec("wtb_conf").origin), "conf")
)
GROUP = "experiment"


class ProjectConfigSource(FileConfigSource):
    """The project's conf/: Hydra's file source, but a YAML file that does not parse is one
    message naming the file, line and column, not PyYAML's traceback. Only files a command
    loads are read: a broken draft beside them stops nothing."""

    @staticmethod
    def scheme() -> str:
        return "wtb-project"

    def load_config(self, config_path: str) -> ConfigResult:
        try:
            return super().load_config(config_path)
        except yaml.MarkedYAMLError as e:
            def at(text: str | None, mark: yaml.Mark | None) -> str:
                return f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else ""

            mark = e.problem_mark or e.context_mark
            path = mark.name if mark else self._normalize_file_name(config_path)
            problem = ", ".join(filter(None, (at(e.context, e.context_mark),
                                              at(e.problem, e.problem_mark))))
            raise ConfigCompositionException(
                f"{path}: not valid YAML: {problem}; fix the file") from None


class ExperimentsConfigSource(ProjectConfigSource):
    """A directory mounted as one config group: `experiment/NAME` -> `<dir>/NAME.yaml`."""

    @staticmethod
    def scheme() -> str:
        return "wtb-experiments"

    def _inner(self, config_path: str) -> str | None:
        if config_path == GROUP:
            return ""
        if config_path.startswith(GROUP + "/"):
            return config_path[len(GROUP) + 1 :]
        return None

    def load_config(self, config_path: str) -> ConfigResult:
        return super().load_config(self._inner(config_path) or config_path)

    def is_group(self, config_path: str) -> bool:
        if config_path == "":
            return True
        inner = self._inner(config_path)
        return inner is not None and super().is_group(inner)

    def is_config(self, config_path: str) -> bool:
        inner = self._inner(config_path)
        return bool(inner) and super().is_config(inner)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        inner = self._inner(config_path)
        if inner is None or not super().is_group(inner):
            return []
        return super().list(inner, results_filter)


def _is_wtb_conf(path: str) -> bool:
    """Whether a search path entry is wtb_conf's packaged conf/ (as pkg:// or as a file path,
    which is what Hydra makes of it under `python -m`)."""
    if path == PACKAGED:
        return True
    path = path.removeprefix("file://")
    return os.path.isabs(path) and os.path.realpath(path) == _PACKAGED_DIR


class WtbConfSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(_is_wtb_conf(e.path) for e in search_path.get_path()):
            return  # another Hydra app
        cwd = os.getcwd()
        conf = os.path.join(cwd, "conf")
        if os.path.isdir(conf):
            search_path.prepend(provider="wtb_conf project", path=f"wtb-project://{conf}",
                                anchor=None)
        experiments = os.path.join(cwd, "experiments")
        if os.path.isdir(experiments):
            search_path.append("wtb_conf experiments", f"wtb-experiments://{experiments}")
