"""The config groups' models (wtb_conf.config.models): one message shape for every bad value, the
sweep refused before it writes anything, and the JSON Schemas an editor checks YAML with."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import flows
import pytest
import yaml
from conftest import ROOT, copy_project, run_bench
from omegaconf import OmegaConf

from wtb_conf.config.checks import (
    case_file_problems,
    clip_message,
    long_override_key,
    state_path_problems,
    top_level_problems,
)
from wtb_conf.config.jsonschema import json_schemas, write_schemas
from wtb_conf.config.models import (
    GROUPS,
    ConfigError,
    EnvConfig,
    StorageConfig,
    WorkflowConfig,
    check,
    check_config,
    storage_spec,
)
from wtb_conf.driver.callback import swept_groups
from wtb_conf.driver.envs import EnvError, spec_for
from wtb_conf.job.admission import job_config
from wtb_conf.job.fork import ForkError
from wtb_conf.job.scoring import check_compare
from wtb_conf.job.workflow import WorkflowError, build_graph
from wtb_conf.store import StoreError, open_store

WORKFLOW = {**flows.WORKFLOW, "cases": {"one": {"x": 1}}}
STORAGE = {"db_url": "sqlite:///data/wtb.db", "blob_root": "data/blobs",
           "checkpoints": "data/checkpoints.db", "inline_max": 65536}
GOOD = {"workflow": WORKFLOW, "env": {"python": None, "packages": []}, "storage": STORAGE,
        "fork": {"run": "ab12"}, "compare": {"objective": None, "mode": "max"}}


def changed(group: str, path: str, value: object) -> object:
    """GOOD[group] with the key at dotted `path` set to `value` (`-` deletes it; "" is the
    whole group)."""
    data = copy.deepcopy(GOOD[group])
    if not path:
        return value
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value == "-":
        del node[last]
    else:
        node[last] = value
    return data


BAD = [
    # workflow: types and shapes
    ("workflow", "edges", 5, "workflow.edges: expected a list of [from, to] pairs, got 5"),
    ("workflow", "edges", [["START"]], "workflow.edges[0]: expected a pair [from, to], got"),
    ("workflow", "edges", [["START", "add"], ["dubble", "add"]],
     "workflow.edges[1]: 'dubble' is not a node; nodes are ['add', 'double'] (or START / END)"),
    ("workflow", "edges", [["double", "add"]],
     "workflow.edges: no edge leaves START; add [START, <first node>]"),
    ("workflow", "edges", [["START", "add"], ["END", "add"]],
     "workflow.edges[1]: edges go from START or a node to a node or END"),
    ("workflow", "nodes.add._target_", "not a path!",
     "workflow.nodes.add._target_: expected a dotted import path like 'pkg.module.func', "
     "got 'not a path!'"),
    ("workflow", "nodes.add._target_", "???",
     "workflow.nodes.add._target_: expected a dotted import path like 'pkg.module.func', "
     "got ??? (no value given)"),
    ("workflow", "nodes.add", {"amount": 3},
     "workflow.nodes.add: expected a mapping with a _target_ (a dotted import path), got"),
    ("workflow", "nodes.START", {"_target_": "flows.add"},
     "workflow.nodes.START: START is reserved; rename the node"),
    ("workflow", "nodes", {}, "workflow.nodes: a workflow needs at least one node"),
    ("workflow", "nodes", ["add"], "workflow.nodes: expected a mapping NODE: {_target_: "),
    ("workflow", "state", 5, "workflow.state: expected a mapping FIELD: TYPE or "),
    ("workflow", "state", {}, "workflow.state: declare the state fields"),
    ("workflow", "state.x", "integer",
     "workflow.state.x.type: 'integer' is not one of any, str, int, float, bool, list, dict"),
    ("workflow", "state.x", {"type": "int", "reducer": "sum"},
     "workflow.state.x.reducer: 'sum' is not one of append, merge"),
    ("workflow", "state.x", {"tipe": "int"},
     "workflow.state.x.tipe: unknown key; a state field has type, reducer"),
    ("workflow", "state.x", 5, "workflow.state.x: expected a type name (any, str, "),
    ("workflow", "routes.add", 5,
     "workflow.routes.add: expected {router: {_target_: ...}, to: [node, ...]}, got 5"),
    ("workflow", "routes.add.to", [],
     "workflow.routes.add.to: expected a non-empty list of node names (or END), got []"),
    ("workflow", "routes.add.to", ["double", "somewhere"],
     "workflow.routes.add.to: 'somewhere' is not a node; nodes are ['add', 'double']"),
    ("workflow", "routes.add.to", "-", "workflow.routes.add.to: missing; the names the router"),
    ("workflow", "routes.ghost", {"router": {"_target_": "a.b"}, "to": ["END"]},
     "workflow.routes.ghost: 'ghost' is not a node"),
    ("workflow", "egdes", [], "workflow.egdes: unknown key; a workflow has name, description, "
                              "state, nodes, edges, routes, cases"),
    ("workflow", "interrupt_before", ["nope"],
     "workflow.interrupt_before[0]: 'nope' is not a node; nodes are ['add', 'double']"),
    ("workflow", "interrupt_after", 5, "workflow.interrupt_after: expected a list of node "
                                       "names, got 5"),
    ("workflow", "cases", [1], "workflow.cases: expected a mapping CASE: {field: value, ...}"),
    ("workflow", "cases.one", None, "workflow.cases.one: expected a mapping FIELD: value"),
    ("workflow", "cases.one.nope", 1,
     "workflow.cases.one.nope: not a state field; the state has x, trail"),
    ("workflow", "metrics", "x", "workflow.metrics: expected a mapping METRIC: state.key.path"),
    ("workflow", "evaluators", {"a/b": {"_target_": "flows.add"}},
     "workflow.evaluators.a/b: names may not contain '/'"),
    ("workflow", "expected", {"uno": 1}, "workflow.expected.uno: not a case; cases are ['one']"),
    ("workflow", "factory", {"_target_": "flows.factory"},
     "workflow.factory: a factory builds the whole graph; remove workflow.state"),
    ("workflow", "", 5, "workflow: expected a mapping of workflow keys"),
    # env
    ("env", "python", 3.1, "env.python: 3.1 is a number; write the version as a string: "
                           "python: \""),
    ("env", "python", "banana", "env.python: 'banana' is not a Python version; write it like "
                                "\"3.11\""),
    ("env", "packages", ["tabulate==="], "env.packages[0]: 'tabulate===' is not a PEP 508 "
                                         "requirement"),
    ("env", "packages", "tabulate", "env.packages: expected a list of PEP 508 requirement "
                                    "strings, e.g. ['tabulate==0.9.0'], got 'tabulate'"),
    ("env", "packages", ["-r reqs.txt"], "env.packages[0]: '-r reqs.txt' is an option, not a "
                                         "package"),
    ("env", "packages", ["x @ https://example.com/x.whl"],
     "env.packages[0]: 'x @ https://example.com/x.whl' is a direct URL or path; name a package"),
    ("env", "index_url", "ftp://pypi", "env.index_url: expected an http(s):// URL, got"),
    ("env", "pkgs", [], "env.pkgs: unknown key; an env has python, packages, index_url, "
                        "extra_index_urls"),
    # storage
    ("storage", "db_url", "notaurl", "storage.db_url: 'notaurl' is not a database URL; give an "
                                     "SQLAlchemy URL, e.g. sqlite:///data/wtb.db"),
    *[("storage", "inline_max", bad, f"storage.inline_max: {bad!r} is not a size; give the "
                                     "bytes up to which a blob lives in the database, an "
                                     "integer >= 0")
      for bad in (-1, True, "big", 1.5)],
    ("storage", "blob_root", "-", "storage.blob_root: missing; the directory of large blobs"),
    ("storage", "db_url", "mysql://u:secret@h/db", "storage.db_url: 'mysql://u:***@h/db' is not "
     "a SQLite or PostgreSQL URL; give sqlite:///PATH (e.g. sqlite:///data/wtb.db) or "
     "postgresql+psycopg://USER@HOST/DB"),
    ("storage", "db_url", "postgresql+psycopg2://h/db", "storage.db_url: "
     "'postgresql+psycopg2://h/db' names the driver 'psycopg2'; wtb_conf reaches PostgreSQL "
     "through psycopg (3): postgresql+psycopg://USER@HOST/DB"),
    ("storage", "checkpoints", "mysql://x", "storage.checkpoints: 'mysql://x' is not a SQLite "
     "file path or a postgresql:// URL; give a path like data/checkpoints.db or "
     "postgresql://USER@HOST/DB"),
    ("storage", "checkpoints", 5, "storage.checkpoints: 5 is not a SQLite file path"),
    ("storage", "blob_root", "foo://bucket/x", "storage.blob_root: 'foo://bucket/x': blobs can "
     "go to a directory or to S3 (s3://), whose uploads are whole or nothing; not 'foo'; a "
     "directory like data/blobs (shared by every node) or s3://bucket/prefix"),
    ("storage", "blob_root", "sftp://host/blobs", "storage.blob_root: 'sftp://host/blobs': "
     "blobs can go to a directory or to S3 (s3://), whose uploads are whole or nothing; not "
     "'sftp'"),
    ("storage", "blob_root", "simplecache::s3://b/x", "storage.blob_root: "
     "'simplecache::s3://b/x': blobs can go to a directory or to S3 (s3://), whose uploads "
     "are whole or nothing; not 'simplecache::s3'"),
    ("storage", "blob_root", "s3://", "storage.blob_root: 's3://' names no bucket or directory"),
    ("storage", "db", "x", "storage.db: unknown key; storage has db_url, blob_root, "
                           "checkpoints, inline_max"),
    # fork
    ("fork", "run", "-", "fork.run: missing; name the run to fork from, e.g. +fork.run=RUN"),
    ("fork", "when", "now", "fork.when: unknown key; fork has run, checkpoint, after, set, "
                            "pause, e.g. +fork.run=RUN +fork.after=NODE"),
    ("fork", "pause", "maybe", "fork.pause: expected true or false, got 'maybe'"),
    ("fork", "run", "nosuchrun", "fork.run: 'nosuchrun' is not a run id; give an id or a unique "
                                 "prefix of one (hexadecimal: `wtb runs`), or last"),
    ("fork", "run", 4.604786e30, "fork.run: the id was read as the number 4.604786e+30 (digits "
                                 "and one e look like one); quote it: +fork.run=\"'12e34'\""),
    ("fork", "checkpoint", 1e5, "fork.checkpoint: the id was read as the number 100000.0"),
    ("fork", "checkpoint", "after-load", "fork.checkpoint: 'after-load' is not a checkpoint id"),
    ("fork", "set", 5, "fork.set: expected a mapping of state fields to values"),
    ("fork", "", {"run": "ab", "checkpoint": "1f", "after": "load"},
     "fork.checkpoint: fork.after is given too; give one of them, not both"),
    ("fork", "", 5, "fork: expected a mapping, e.g. +fork.run=RUN +fork.after=NODE, got 5"),
    # compare
    ("compare", "mode", "best", "compare.mode: 'best' is not one of max, min"),
    ("compare", "goal", "x", "compare.goal: unknown key; compare has objective, mode"),
    ("compare", "objective", 5, "compare.objective: expected the name of a metric, a score, "
                                "success_rate or pass_rate, got 5"),
]


@pytest.mark.parametrize(("group", "path", "value", "message"), BAD,
                         ids=[f"{g}.{p}={v!r}"[:60] for g, p, v, _ in BAD])
def test_a_bad_value_names_its_key_and_what_is_valid(group, path, value, message):
    with pytest.raises(ConfigError) as info:
        check(GROUPS[group], changed(group, path, value), group)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text and "validation error" not in text and "errors.pydantic" not in text


def test_the_good_config_passes_and_keeps_node_params():
    spec = check(WorkflowConfig, WORKFLOW, "workflow")
    assert spec.nodes["add"].target == "flows.add" and spec.nodes["add"].params() == {
        "amount": 2}
    assert check(GROUPS["fork"], {"run": 12345678}, "fork").run == "12345678"  # Hydra's int


@pytest.mark.parametrize(("key", "value", "stored"), [
    ("db_url", "sqlite:///data/wtb.db", "sqlite:////launch/data/wtb.db"),
    ("db_url", "postgresql+psycopg://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
    ("db_url", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"),  # psycopg's, not psycopg2
    ("db_url", "postgres://u@h/db", "postgresql+psycopg://u@h/db"),
    ("checkpoints", "data/checkpoints.db", "/launch/data/checkpoints.db"),
    ("checkpoints", "/abs/cp.db", "/abs/cp.db"),
    ("checkpoints", "postgresql://u@h/db", "postgresql://u@h/db"),
    ("checkpoints", "postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ("blob_root", "data/blobs", "/launch/data/blobs"),
    ("blob_root", "/mnt/shared/blobs", "/mnt/shared/blobs"),
    ("blob_root", "s3://bucket/prefix", "s3://bucket/prefix"),  # a URL is not a relative path
])
def test_storage_accepts_paths_and_urls(key, value, stored):
    assert getattr(storage_spec(STORAGE | {key: value}, Path("/launch")), key) == stored


def test_every_problem_is_one_line_under_its_group():
    with pytest.raises(ConfigError) as info:
        check(StorageConfig, STORAGE | {"db_url": "x", "inline_max": -1, "blob_root": 3},
              "storage")
    lines = str(info.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "storage.db_url", "storage.blob_root", "storage.inline_max"]


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: build_graph(OmegaConf.create(changed("workflow", "edges", 5))), WorkflowError,
     "workflow.edges: expected a list"),
    (lambda: spec_for({"python": 3.1}, {}, "job #0 (env=x)"), EnvError,
     "job #0 (env=x): env.python: 3.1 is a number"),
    (lambda: storage_spec(STORAGE | {"inline_max": -1}, Path(".")), StoreError,
     "storage.inline_max: -1 is not a size"),
    (lambda: job_config(OmegaConf.create({"workflow": changed("workflow", "name", "x"),
                                          "fork": {"run": "ab", "pause": "maybe"}})), ForkError,
     "fork.pause: expected true or false"),
    (lambda: check_compare({"mode": "best"}, {}), WorkflowError, "compare.mode: 'best'"),
])
def test_each_group_raises_its_own_error_class(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_omegaconf_values_are_resolved_before_they_are_checked():
    cfg = OmegaConf.create({"limit": 10, "workflow": changed("workflow", "routes.add.router",
                                                             {"_target_": "flows.small_or_big",
                                                              "limit": "${limit}"})})
    assert check(WorkflowConfig, cfg.workflow, "workflow").routes["add"].router.params() == {
        "limit": 10}


def test_the_sweep_check_lets_a_swept_group_be_incomplete_but_not_wrong():
    """A variant may add the node an edge names or set the `_target_` its base leaves `???`:
    a group a sweep can change is checked partially; its wrong types are refused still."""
    base = changed("workflow", "edges", [["START", "add"], ["add", "clean"]])
    base["nodes"]["clean"] = {"_target_": "???"}
    cfg = OmegaConf.create({"workflow": base, "storage": STORAGE})
    check_config(cfg, whole={"storage"})
    with pytest.raises(ConfigError, match=r"workflow.edges\[1\]: 'clean' is not a node|"
                                          r"workflow.nodes.clean._target_"):
        check_config(cfg, whole={"storage", "workflow"})
    cfg.workflow.edges = 5
    with pytest.raises(ConfigError, match="workflow.edges: expected a list"):
        check_config(cfg, whole={"storage"})
    with pytest.raises(ConfigError, match="rerun: expected true or false, got 'maybe'"):
        check_config(OmegaConf.create({"rerun": "maybe"}))


BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@pytest.mark.parametrize(("task", "params", "sweeper", "swept"), [
    (["workflow=x", "rerun=true"], {}, BASIC, set()),
    (["compare.mode=max,min"], {}, BASIC, {"compare"}),
    ([], {"variant": "a,b", "workflow.routes.r.router.t": "0.1"}, BASIC, {"workflow"}),
    (["+fork.run=a,b"], {}, BASIC, {"fork"}),
    (["+experiment=a,b"], {}, BASIC, {"*"}),
    (["rerun=true"], {}, "some.other.Sweeper", {"*"}),
])
def test_which_groups_a_sweep_may_change(task, params, sweeper, swept):
    cfg = OmegaConf.create({"workflow": {}, "rerun": False, "compare": {}, "hydra": {
        "overrides": {"task": task}, "sweeper": {"_target_": sweeper, "params": params}}})
    assert swept_groups(cfg) == swept


# -- JSON Schemas ----------------------------------------------------------------------------

SHIPPED = {
    "workflow": ["conf/workflow/*.yaml"],
    "variant": ["conf/variant/*.yaml"],
    "env": ["conf/env/*.yaml", "wtb_conf/conf/env/*.yaml"],
    "storage": ["wtb_conf/conf/storage/*.yaml"],
    "experiment": ["experiments/*.yaml"],
}
MODELS = {"workflow": WorkflowConfig, "env": EnvConfig, "storage": StorageConfig}


def shipped(name: str) -> list[Path]:
    files = [p for pattern in SHIPPED[name] for p in sorted(ROOT.glob(pattern))]
    assert files, name
    return files


def test_write_schemas_writes_one_well_formed_file_per_kind(tmp_path):
    paths = write_schemas(tmp_path / "schemas")
    assert sorted(p.name for p in paths) == sorted(f"{n}.schema.json" for n in SHIPPED)
    schemas = {p.name.split(".")[0]: json.loads(p.read_text()) for p in paths}
    assert schemas == json_schemas()
    workflow = schemas["workflow"]
    assert workflow["additionalProperties"] is False
    assert list(workflow["properties"]) == list(WorkflowConfig.model_fields)
    assert set(schemas["storage"]["required"]) == {"db_url", "blob_root", "checkpoints",
                                                   "inline_max"}
    assert schemas["storage"]["properties"]["inline_max"]["minimum"] == 0
    assert workflow["$schema"] == "http://json-schema.org/draft-07/schema#"  # what editors read
    assert "$defs" not in json.dumps(schemas) and "prefixItems" not in json.dumps(schemas)
    node = workflow["definitions"]["CallableSpec"]
    assert node["required"] == ["_target_"] and node["additionalProperties"] is True
    assert "required" not in json.dumps(schemas["variant"])  # a variant overlays a few keys
    assert {"workflow", "env", "storage", "fork", "compare", "rerun"} <= set(
        schemas["experiment"]["properties"])


@pytest.mark.parametrize("name", list(MODELS))
def test_the_shipped_group_files_pass_their_model(name):
    for path in shipped(name):
        check(MODELS[name], yaml.safe_load(path.read_text()), name)


@pytest.mark.parametrize("name", list(SHIPPED))
def test_the_shipped_files_validate_against_the_json_schema(name):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schemas()[name]
    validator = jsonschema.Draft7Validator(schema)
    validator.check_schema(schema)
    for path in shipped(name):
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text()) or {}))
        assert not errors, (path, [e.message for e in errors])


@pytest.mark.parametrize(("name", "doc"), [
    ("workflow", {"egdes": []}),
    ("workflow", {"edges": 5}),
    ("workflow", {"nodes": {"a": {"amount": 1}}}),
    ("workflow", {"state": {"x": "integer"}}),
    ("env", {"python": 3.1}),
    ("storage", STORAGE | {"inline_max": -1}),
    ("experiment", {"compare": {"mode": "best"}}),
])
def test_the_json_schema_flags_what_the_model_refuses(name, doc):
    jsonschema = pytest.importorskip("jsonschema")
    assert list(jsonschema.Draft7Validator(json_schemas()[name]).iter_errors(doc))


# -- the sweep refuses before it writes ------------------------------------------------------

def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_bad_value_refuses_the_sweep_with_the_store_untouched(tmp_path):
    project = copy_project(tmp_path / "fresh")
    proc = run_bench(project, "-m", "+experiment=demo", "workflow.edges=5", check=False)
    assert proc.returncode == 1
    assert "workflow.edges: expected a list of [from, to] pairs, got 5" in proc.stderr
    assert "Traceback" not in proc.stderr and "Callback" not in proc.stderr
    assert not (project / "data").exists() and not (project / "multirun").exists()

    project = copy_project(tmp_path / "stored")
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        store.create_sweep(["earlier"])
    con = sqlite3.connect(project / "data/wtb.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = files_of(project / "data")
    # the demo sweeps the workflow: its values are checked, what a job checks is left to it;
    # one workflow for every job: the jobs' own checks run first too (imports, objective)
    for bad in (["+experiment=demo", "workflow.edges=5"],
                ["+experiment=demo", "storage.inline_max=-1"],
                ["+experiment=demo", "env.python=3.11"],
                ["workflow=file_processing", "workflow.nodes.load._target_=nosuch.mod.fn"],
                ["workflow=file_processing", "compare.objective=nope"],
                ["workflow=file_processing", "+fork.run=0000beef", "+fork.pause=maybe"]):
        proc = run_bench(project, "-m", *bad, check=False)
        key = bad[-1].lstrip("+").split("=")[0]
        assert proc.returncode == 1 and f"{key}: " in proc.stderr, (bad, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        after = {k: v for k, v in files_of(project / "data").items()
                 if not (k.endswith("-shm") or k.endswith("-wal") and not v)}
        assert after == before, bad


def test_a_bad_value_in_some_jobs_of_a_sweep_refuses_it_naming_those_jobs(tmp_path):
    """Every job's config is known when the sweep starts: one bad job refuses the sweep (it
    used to be that job's recorded failure, after the others ran)."""
    project = copy_project(tmp_path)
    proc = run_bench(project, "-m", "workflow=file_processing", "compare.mode=max,best",
                     check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == ("1 of 2 jobs [job 1 (compare.mode=best)]: compare.mode: "
                                   "'best' is not one of max, min"), proc.stderr
    assert not (project / "data").exists() and not (project / "multirun").exists()


def test_a_value_that_resolves_only_in_a_job_is_left_to_the_jobs(tmp_path):
    """`${hydra:...}` cannot resolve when the sweep starts: the check lets it be, and the
    sweep is recorded as one sweep with its jobs (not one stray sweep per job)."""
    project = copy_project(tmp_path)
    wf = project / "conf/workflow/file_processing.yaml"
    wf.write_text(wf.read_text().replace(
        "settings_file: experiments/", "settings_file: ${hydra:runtime.cwd}/experiments/"))
    assert "${hydra:runtime.cwd}" in wf.read_text()
    proc = run_bench(project, "-m", "workflow=file_processing", "storage.inline_max=3000,4000")
    assert "2 of 2 jobs completed" in proc.stdout and "Callback" not in proc.stderr
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        [sweep] = {r["sweep_id"] for r in store.runs()}
        assert sweep == store.last_sweep()


def test_wtb_schema_writes_them_without_a_store(tmp_path, monkeypatch, capsys):
    from wtb_conf.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["schema"]) == 0
    written = sorted(p.name for p in (tmp_path / ".wtb/schemas").iterdir())
    assert written == sorted(f"{n}.schema.json" for n in json_schemas())
    assert ".wtb/schemas/workflow.schema.json" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()  # no store was made
    assert main(["schema", "--out", "/proc/wtb"]) == 1
    assert "wtb: error: /proc/wtb: No such file or directory" in capsys.readouterr().err


def test_no_prefix_of_a_new_id_is_read_as_a_number():
    """Hydra reads +fork.run=4604786e24 as a float (and the digits are gone): ids wtb makes
    start with a letter, so whatever prefix a user copies stays a string."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from wtb_conf.store.records import new_id

    parser = OverridesParser.create()
    for hex_id in (new_id() for _ in range(200)):
        for n in (1, 4, 10):
            value = parser.parse_override(f"+fork.run={hex_id[:n]}").value()
            assert value == hex_id[:n], hex_id


@pytest.mark.parametrize("hex_id, typed, expected", [
    ("a1b2", False, "+fork.run=a1b2"),
    ("a1b2", True, "+fork.run=a1b2"),
    ("4604786e24", False, "+fork.run='4604786e24'"),  # an argv element: Hydra unquotes it
    ("4604786e24", True, "+fork.run=\"'4604786e24'\""),  # typed in a shell
])
def test_id_override_quotes_an_older_stores_numeric_looking_id(hex_id, typed, expected):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from wtb_conf.config.values import id_override

    assert id_override("fork.run", hex_id, typed) == expected
    if not typed:
        assert OverridesParser.create().parse_override(expected).value() == hex_id


# -- checks of a whole job config beyond its groups (wtb_conf.config.checks) -----------------

FIELDS = "the state has x, trail, src"
FILE_WF = {"state": {"x": "int", "trail": "list", "src": "text_file"}}


@pytest.mark.parametrize(("workflow", "problems"), [
    ({"metrics": {"typo": "n_tokenz"}},
     [f"workflow.metrics.typo: 'n_tokenz' names no state field; {FIELDS}"]),
    ({"metrics": {"deep": "trail.0", "ok": "x"}}, []),
    ({"evaluators": {"t": {"_target_": "wtb_conf.evaluators.close_to", "key": "nosuchkey"}}},
     [f"workflow.evaluators.t.key: 'nosuchkey' names no state field; {FIELDS}"]),
    ({"evaluators": {"t": {"_target_": "wtb_conf.evaluators.file_exists", "path": "a"}}}, []),
    ({"factory": {"_target_": "flows.factory"}, "metrics": {"m": "anything"}}, []),
])
def test_metric_paths_and_evaluator_keys_name_state_fields(workflow, problems):
    assert state_path_problems({**FILE_WF, **workflow}) == problems


def test_unknown_top_level_keys_are_named_with_the_valid_ones():
    assert top_level_problems(["workflow", "hydra", "rerun", "fork"]) == []
    [line] = top_level_problems(["workflow", "compre"])
    assert line == ("compre: unknown top-level key; the config has the groups workflow, env, "
                    "storage, fork, compare (variant=... and +experiment=... set keys in them) "
                    "and the switches rerun, share_prefixes, trials")


@pytest.mark.parametrize(("value", "problem"), [
    ("in.csv", None),
    ("nope.csv", "'nope.csv' does not exist (paths are relative to the launch dir {dir}); "
                 "name an existing file"),
    ("sub", "'sub' is a directory; a text_file field names a file"),
    ("bin.csv", "'bin.csv' is not UTF-8 text (byte 2: invalid start byte); declare the "
                "field `file` if its node reads bytes"),
    (5, "expected the path of a file (the field is a text_file), got 5"),
])
def test_case_input_files_are_checked_naming_the_case_key(tmp_path, value, problem):
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    (tmp_path / "bin.csv").write_bytes(b"\x00\x01\xff\xfe")
    (tmp_path / "sub").mkdir()
    workflow = {**copy.deepcopy(FILE_WF), "cases": {"one": {"src": value, "x": 1}}}
    expected = [] if problem is None else [
        "workflow.cases.one.src: " + problem.format(dir=tmp_path)]
    assert case_file_problems(workflow, tmp_path) == expected
    # a `file` is any bytes
    workflow["state"]["src"] = {"type": "file"}
    if value == "bin.csv":
        assert case_file_problems(workflow, tmp_path) == []


def test_long_values_are_clipped_in_messages_and_long_keys_refused():
    long = "v" * 100_000
    message = clip_message(f"compare.objective: {long!r} is not a metric; valid: a, b")
    assert message == (f"compare.objective: '{'v' * 199}… (100002 characters) is not a "
                       "metric; valid: a, b")
    assert clip_message(message) == message  # clipping twice changes nothing
    assert long_override_key(["-m", "workflow=x", "+a.b=" + long]) is None  # a value: clipped
    refused = long_override_key(["-m", "k" * 100_000 + "=1"])
    assert refused.startswith("k" * 60 + "…: an override key of 100000 characters")


def test_a_metric_missing_in_a_case_is_marked_missing_not_averaged(caplog):
    from wtb_conf.job.scoring import metrics_of

    finals = {"a": {"n": 2, "d": {"x": 1}}, "b": {"n": None, "d": {}}}
    with caplog.at_level("WARNING"):
        out = metrics_of(finals, {"n": "n", "x": "d.x"})
    assert out == {"a/n": 2, "b/n": None, "a/x": 1, "b/x": None}
    assert "metric n (n) is missing in case b" in caplog.text
    assert metrics_of({"a": {"n": 2}, "b": {"n": 4}}, {"n": "n"})["n"] == 3
