"""Regenerate venv_manager/proto/ from protos/venv_manager.proto with grpcio-tools:

    python -m venv_manager.genproto [OUT_DIR]

The generated files are committed; tests/test_venv_manager.py regenerates them into a temp
dir and fails when they differ, so the stubs never drift from the proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "protos" / "venv_manager.proto"


def generate(out: Path) -> None:
    from grpc_tools import protoc  # grpcio-tools: a dev/test dependency, not a runtime one

    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main([
        "protoc", f"-I{PROTO.parent}", f"--python_out={out}", f"--pyi_out={out}",
        f"--grpc_python_out={out}", str(PROTO),
    ])
    if code != 0:
        raise SystemExit(f"protoc failed on {PROTO} (exit {code})")
    # protoc writes `import venv_manager_pb2`; make it relative to the package.
    grpc_file = out / "venv_manager_pb2_grpc.py"
    grpc_file.write_text(grpc_file.read_text().replace(
        "import venv_manager_pb2 as", "from . import venv_manager_pb2 as"))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "proto")
