"""The house rules README's Layout states, checked on the code itself: which floor may import
which (the import walls), and that modules and functions stay short enough to read. Each
checker also gets a table of deliberate violations, so a checker that saw nothing would fail.

A function may run past MAX_FUNCTION lines when a `# long: WHY` comment sits on its `def`
line or the line above it (its decorators included): the reason is then in the code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wtb_conf", "hydra_plugins", "venv_manager")
MAX_MODULE = 400  # lines
MAX_FUNCTION = 60  # lines, decorators and docstring included
GENERATED = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")  # protoc's output

# wtb_conf's floors, bottom up: a module imports from its own floor and those below it only.
FLOORS = {
    "wtb_conf": 0, "wtb_conf.storage": 0, "wtb_conf.evaluators": 0,  # leaves
    "wtb_conf.store": 1,
    "wtb_conf.config": 2,
    "wtb_conf.job": 3,
    "wtb_conf.results": 4,
    "wtb_conf.driver": 5,
    "wtb_conf.cli": 6, "wtb_conf.__main__": 6,
}
FLOOR_NAMES = ["leaves", "store", "config", "job", "results", "driver", "cli"]
# What wtb_conf may use of the launcher plugin: the package and its public modules, never
# _core & co.
LAUNCHER = "hydra_plugins.wtb_conf_launcher"
LAUNCHER_PUBLIC = ("plan", "settings", "config")
# What wtb_conf may use of the venv manager: its protocol (the gRPC stubs), not its insides.
VENV_MANAGER_PUBLIC = {"venv_manager.proto"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, those inside functions too (a lazy import is
    still a dependency); `from a import b` gives a.b, b being a module or not."""
    package = _module_name(path, root).rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = _module_name(path, root)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def _floor(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOORS:
            return FLOORS[".".join(parts[:n])]
    return None


def _within(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def _launcher_public(module: str) -> bool:
    if module == LAUNCHER:
        return True
    rest = module.removeprefix(LAUNCHER + ".")
    return rest != module and rest.split(".")[0] in LAUNCHER_PUBLIC


def wall_violations(root: Path) -> list[str]:
    """Every import that crosses a wall, as 'file:line imports X: why not'."""
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if path.name.endswith(GENERATED) or ".venv" in path.parts:
                continue
            here = _module_name(path, root)
            for line, target in imports(path, root):
                top = target.split(".")[0]
                why = None
                if package != "wtb_conf" and top == "wtb_conf":
                    why = f"{package} imports nothing of wtb_conf (it is wtb_conf's dependency)"
                elif package == "wtb_conf" and top == "hydra_plugins" \
                        and not _launcher_public(target):
                    why = (f"wtb_conf uses only the launcher's public modules: {LAUNCHER}"
                           f".{{{','.join(LAUNCHER_PUBLIC)}}}")
                elif package == "wtb_conf" and top == "venv_manager" \
                        and not _within(target, VENV_MANAGER_PUBLIC):
                    why = "wtb_conf uses only the venv manager's protocol (venv_manager.proto)"
                elif package == "wtb_conf" and top == "wtb_conf":
                    mine, theirs = _floor(here), _floor(target)
                    if mine is not None and theirs is not None and theirs > mine:
                        why = (f"the {FLOOR_NAMES[mine]} floor imports only from "
                               + ", ".join(FLOOR_NAMES[: mine + 1])
                               + f", not from {FLOOR_NAMES[theirs]}")
                if why:
                    out.append(f"{path.relative_to(root)}:{line} imports {target}: {why}")
    return out


def _sources(root: Path) -> list[Path]:
    return [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))
            if not p.name.endswith(GENERATED) and ".venv" not in p.parts]


def size_violations(root: Path) -> list[str]:
    """Modules over MAX_MODULE lines; functions over MAX_FUNCTION with no `# long:` reason."""
    out = []
    for path in _sources(root):
        text = path.read_text()
        lines = text.splitlines()
        where = path.relative_to(root)
        if len(lines) > MAX_MODULE:
            out.append(f"{where}: {len(lines)} lines (at most {MAX_MODULE}: split it by role)")
        for node in ast.walk(ast.parse(text, str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - first + 1
            said = " ".join(lines[max(first - 2, 0): node.lineno])
            if length > MAX_FUNCTION and "# long:" not in said:
                out.append(f"{where}:{node.lineno} {node.name}: {length} lines (at most "
                           f"{MAX_FUNCTION}, or a `# long: WHY` comment on or above its def)")
    return out


def test_the_code_keeps_its_import_walls():
    assert wall_violations(ROOT) == []


def test_modules_and_functions_stay_readable():
    assert size_violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"wtb_conf/store/x.py": "from wtb_conf.job.task import run\n"},
         ["wtb_conf/store/x.py:1 imports wtb_conf.job.task.run: the store floor imports only "
          "from leaves, store, not from job"]),
        ({"wtb_conf/job/x.py": "def f():\n    import wtb_conf.cli.replay\n"},  # lazily
         ["wtb_conf/job/x.py:2 imports wtb_conf.cli.replay: the job floor imports only from "
          "leaves, store, config, job, not from cli"]),
        ({"wtb_conf/config/x.py": "from ..driver import planner\n"},  # relative
         ["wtb_conf/config/x.py:1 imports wtb_conf.driver.planner: the config floor imports "
          "only from leaves, store, config, not from driver"]),
        ({"wtb_conf/storage.py": "from wtb_conf.store import Store\n"},
         ["wtb_conf/storage.py:1 imports wtb_conf.store.Store: the leaves floor imports only "
          "from leaves, not from store"]),
        ({"hydra_plugins/wtb_conf_launcher/x.py": "from wtb_conf.job import task\n"},
         ["hydra_plugins/wtb_conf_launcher/x.py:1 imports wtb_conf.job.task: hydra_plugins "
          "imports nothing of wtb_conf (it is wtb_conf's dependency)"]),
        ({"venv_manager/x.py": "import wtb_conf\n"},
         ["venv_manager/x.py:1 imports wtb_conf: venv_manager imports nothing of wtb_conf (it "
          "is wtb_conf's dependency)"]),
        ({"wtb_conf/driver/x.py": "from hydra_plugins.wtb_conf_launcher._core import submit\n"},
         ["wtb_conf/driver/x.py:1 imports hydra_plugins.wtb_conf_launcher._core.submit: "
          "wtb_conf uses only the launcher's public modules: "
          "hydra_plugins.wtb_conf_launcher.{plan,settings,config}"]),
        ({"wtb_conf/driver/x.py": "from hydra_plugins.wtb_pairwise_sweeper import sweeper\n"},
         ["wtb_conf/driver/x.py:1 imports hydra_plugins.wtb_pairwise_sweeper.sweeper: "
          "wtb_conf uses only the launcher's public modules: "
          "hydra_plugins.wtb_conf_launcher.{plan,settings,config}"]),
        ({"wtb_conf/driver/x.py": "from venv_manager.envs import Envs\n"},
         ["wtb_conf/driver/x.py:1 imports venv_manager.envs.Envs: wtb_conf uses only the venv "
          "manager's protocol (venv_manager.proto)"]),
        # what is allowed
        ({"wtb_conf/cli/x.py": "from wtb_conf.driver.callback import SWEEP_ID_FILE\n"
                               "from wtb_conf.store import Store\nimport wtb_conf\n",
          "wtb_conf/job/y.py": "from hydra_plugins.wtb_conf_launcher.plan import handoff\n"
                               "from hydra_plugins.wtb_conf_launcher import settings\n",
          "wtb_conf/driver/z.py": "from venv_manager.proto import venv_manager_pb2\n"
                                  "import hydra_plugins.wtb_conf_launcher as launcher\n"}, []),
    ],
)
def test_a_wall_crossed_on_purpose_is_named(tmp_path, files, expected):
    assert wall_violations(_tree(tmp_path, files)) == expected


def _body(n: int) -> str:
    return "".join(f"    x{i} = {i}\n" for i in range(n))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n" + _body(59), []),  # 60 lines
        ("def f():\n" + _body(60),
         ["wtb_conf/x.py:1 f: 61 lines (at most 60, or a `# long: WHY` comment on or above "
          "its def)"]),
        ("@staticmethod\ndef f():\n" + _body(59),  # the decorator counts
         ["wtb_conf/x.py:2 f: 61 lines (at most 60, or a `# long: WHY` comment on or above "
          "its def)"]),
        ("# long: one transaction, in the order its comments give\ndef f():\n" + _body(80), []),
        ("def f():  # long: a table\n" + _body(80), []),
        ("# long: a reason two lines up does not count\n\ndef f():\n" + _body(80),
         ["wtb_conf/x.py:3 f: 81 lines (at most 60, or a `# long: WHY` comment on or above "
          "its def)"]),
        ("x = 1\n" * 401, ["wtb_conf/x.py: 401 lines (at most 400: split it by role)"]),
    ],
)
def test_a_long_module_or_function_is_named(tmp_path, source, expected):
    assert size_violations(_tree(tmp_path, {"wtb_conf/x.py": source})) == expected


def test_a_command_that_reads_the_store_does_not_import_langgraph():
    """`wtb compare`, `wtb runs`, ... read the config floor (its models) but run no graph:
    LangGraph's import alone was ~0.5 s of a 0.8 s `wtb compare` (benchmarks/compare_bench.py)."""
    code = ("import sys, wtb_conf.cli, wtb_conf.results.compare, wtb_conf.results.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'langgraph'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
