"""wtb_conf: a workflow test bench for LangGraph driven by Hydra configs.

Node functions may call `output_dir()` for the directory their files belong in (it is also
the working directory while they run) and `launch_dir()` for the directory the sweep was
started from, where a project's input files live.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# Set by the job around each case. A job process runs one case at a time, so module state is
# enough, and it is visible from the threads LangGraph runs parallel nodes on.
_current: dict[str, Path] = {}


def output_dir() -> Path:
    """The output directory of the case being run: write files here (or by relative path)."""
    try:
        return _current["output_dir"]
    except KeyError:
        raise RuntimeError("output_dir() is only available while a wtb_conf job runs") from None


def launch_dir() -> Path:
    """The directory `python -m wtb_conf` was started from (the project directory)."""
    return _current.get("launch_dir") or Path.cwd()


__all__ = ["launch_dir", "output_dir"]
