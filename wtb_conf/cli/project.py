"""`wtb init` and `wtb schema`: the commands that set up a project, and need no store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

INIT = "make a minimal project that `python -m wtb_conf -m workflow=hello` runs (no store needed)"
SCHEMA = ("write JSON Schemas of the config files, for an editor to complete and check them "
          "(no store needed)")


@click.command("schema", help=SCHEMA, short_help=SCHEMA)
@click.option("--out", metavar="DIR", default=".wtb/schemas", show_default=True,
              help="the directory to write them into")
def cmd_schema(out: str) -> None:
    from wtb_conf.config.jsonschema import write_schemas

    for path in write_schemas(Path(out)):
        print(path)
    print("map them to your files in your editor: docs/config.md, 'Completion and checking in "
          "your editor'")


@click.command("init", short_help=INIT,
               help=f"{INIT}\n\nDIR: where (default: the current directory; made if missing)")
@click.argument("dir", default=".", required=False, metavar="[DIR]")
def cmd_init(dir: str) -> int:
    from wtb_conf.cli.init import InitError, make_project
    from wtb_conf.cli.upkeep import mixed_note

    try:
        written = make_project(dir)
    except InitError as e:
        print(f"wtb: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    where = "" if Path(dir).resolve() == Path.cwd() else f"cd {dir} && "
    print(f"run it: {where}python -m wtb_conf -m workflow=hello   (then `wtb compare`)")
    print("the store goes in data/ (storage.db_url, storage.blob_root, storage.checkpoints): "
          "keep your own input files out of it, e.g. in inputs/ as here")
    if note := mixed_note(str(Path(dir, "data", "wtb.db"))):
        print(f"warning: {note}")
    return 0


COMMANDS = (cmd_schema, cmd_init)
