"""Docs are part of done: these fail when a command, flag or config key is undocumented."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from wtb_conf.cli import wtb
from wtb_conf.job.workflow import KEYS

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = (ROOT / "docs/cli.md").read_text()
CONFIG_MD = (ROOT / "docs/config.md").read_text()


def subcommands() -> dict[str, click.Command]:
    return dict(wtb.commands)


def section(md: str, heading: str) -> str:
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#|\Z)", md, re.M | re.S)
    assert match, f"docs/cli.md has no '### {heading}' section"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_wtb_command_and_flag_is_documented(name):
    text = section(CLI_MD, f"wtb {name}")
    for param in subcommands()[name].params:  # (click keeps -h/--help out of params)
        for flag in param.opts + param.secondary_opts if isinstance(param, click.Option) else []:
            if flag not in ("-h", "--help"):
                assert flag in text, f"wtb {name} {flag} is not in docs/cli.md"


@pytest.mark.parametrize("group", ["env", "storage"])
def test_every_packaged_config_key_is_documented(group):
    cfg = yaml.safe_load((ROOT / f"wtb_conf/conf/{group}/default.yaml").read_text())
    for key in cfg:
        assert f"`{key}`" in CONFIG_MD, f"{group}.{key} is not in docs/config.md"


def test_every_workflow_key_is_documented():
    for key in KEYS:
        assert f"| `{key}` |" in CONFIG_MD, f"workflow.{key} is not in docs/config.md"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in readme
    assert command in (ROOT / ".ci/run").read_text()


def test_every_launcher_field_is_documented():
    from dataclasses import fields

    from hydra_plugins.wtb_conf_launcher.config import WtbRayLauncherConf

    text = (ROOT / "docs/launcher.md").read_text()
    for f in fields(WtbRayLauncherConf):
        if f.name != "_target_":
            assert f"| `{f.name}` |" in text, f"hydra.launcher.{f.name} is not in docs/launcher.md"


def test_every_planner_field_is_documented_and_configurable():
    import inspect

    from hydra.core.config_store import ConfigStore

    import wtb_conf.__main__  # noqa: F401  (stores hydra/launcher=wtb)
    from wtb_conf.driver.planner import Planner

    text = (ROOT / "docs/launcher.md").read_text()
    node = ConfigStore.instance().load("hydra/launcher/wtb.yaml").node
    for name in inspect.signature(Planner).parameters:
        assert f"| `{name}` |" in text, f"hydra.launcher.planner.{name} is not in launcher.md"
        assert name in node.planner, f"hydra.launcher.planner.{name} cannot be overridden"


def test_every_top_level_and_fork_key_is_documented():
    from wtb_conf.job.fork import FORK_KEYS

    cfg = yaml.safe_load((ROOT / "wtb_conf/conf/config.yaml").read_text())
    for key in set(cfg) - {"defaults", "hydra"}:
        assert f"| `{key}` |" in CONFIG_MD, f"{key} is not in docs/config.md"
    for key in FORK_KEYS:
        assert f"| `fork.{key}` |" in CONFIG_MD, f"fork.{key} is not in docs/config.md"


def test_every_probe_row_names_a_test_that_exists():
    """docs/reliability.md's "Faults and inputs found by probes": each row's test exists."""
    doc = (ROOT / "docs/reliability.md").read_text()
    match = re.search(r"^## Faults and inputs found by probes\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    assert match, "docs/reliability.md has no 'Faults and inputs found by probes' section"
    rows = [line for line in match.group(1).splitlines() if line.startswith("| ")][2:]
    for row in rows:
        ref = re.search(r"`(tests/[\w/]+\.py)::(\w+)`", row)
        assert ref, f"this row names no test: {row}"
        path, name = ref.groups()
        source = (ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\b", source, re.M), f"{path} has no {name}"
