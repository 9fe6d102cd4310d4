"""`wtb init [DIR]`: a minimal project that `python -m wtb_conf -m workflow=hello` runs: a
workflow config, its nodes module and one case's input file. It writes no file that exists
already (it names those and writes none)."""

from __future__ import annotations

import os
from pathlib import Path

WORKFLOW = """\
# A two-node workflow: read a name from the case's input file, write a greeting.
# Every key: docs/config.md. Run it: python -m wtb_conf -m workflow=hello
name: hello

state:
  name_file: str
  name: str
  greeting: str
  chars: int

nodes:
  read:
    _target_: hello_nodes.read
  greet:
    _target_: hello_nodes.greet
    punctuation: "!"

edges:
  - [START, read]
  - [read, greet]
  - [greet, END]

cases:                        # each case is one LangGraph thread; its input state
  world:
    name_file: inputs/world.txt

metrics:                      # a column of `wtb compare` per metric: a path into the state
  chars: chars

evaluators:                   # scored after each case ends (docs/compare.md)
  greeted:
    _target_: wtb_conf.evaluators.file_exists
    path: greeting.txt
"""

NODES = '''\
"""The nodes of conf/workflow/hello.yaml: each takes the state (plus its YAML params) and
returns the fields it changes. Files written by relative path land in the case's output
directory; inputs are found from the launch directory."""

from pathlib import Path

from wtb_conf import launch_dir


def read(state: dict) -> dict:
    return {"name": (launch_dir() / state["name_file"]).read_text().strip()}


def greet(state: dict, punctuation: str = ".") -> dict:
    greeting = f"Hello, {state['name']}{punctuation}"
    Path("greeting.txt").write_text(greeting + "\\n")
    return {"greeting": greeting, "chars": len(greeting)}
'''

FILES = {
    "conf/workflow/hello.yaml": WORKFLOW,
    "hello_nodes.py": NODES,
    "inputs/world.txt": "world\n",
}


class InitError(ValueError):
    """A project that cannot be made where asked; the message names the paths."""


def make_project(root: str | os.PathLike) -> list[Path]:
    """Write the hello project under `root` (made if missing); the files written. Refuses,
    writing nothing, when one of them exists."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InitError(f"{root} is not a directory")
    taken = [rel for rel in FILES if (root / rel).exists() or (root / rel).is_symlink()]
    if taken:
        raise InitError(f"{', '.join(str(root / rel) for rel in taken)} already exist: "
                        "nothing written; run `wtb init` in another directory, or move them")
    written = []
    for rel, content in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x") as f:  # "x": never over a file made since the check
            f.write(content)
        written.append(path)
    return written
