"""`wtb schema`: JSON Schemas of the config files, generated from the models that check them
(wtb_conf.config.models), for an editor's YAML language server (docs/config.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from wtb_conf.config.models import (
    GROUPS,
    EnvConfig,
    FlagsConfig,
    StorageConfig,
    WorkflowConfig,
)

DRAFT = "http://json-schema.org/draft-07/schema#"
SCHEMA_DIR = Path(".wtb/schemas")  # the default of `wtb schema --out`


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
