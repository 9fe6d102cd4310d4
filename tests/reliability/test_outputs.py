"""Awkward outputs, written by a real node in a real sweep: symlinks (inside, outside, dangling,
to a directory), many small files, a file over the inline limit, a file that vanishes while
the case is committed. Each is committed and restored as it was, or left out with a warning
that names it; the store stays clean. (The 2 GiB and 100,000-file cases, with peak memory,
are in benchmarks/memory_bench.py: too slow for every CI run.)"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from conftest import run_bench
from test_faults import assert_nothing_lost, runs, wtb

WORKFLOW = """
state: {x: int}
nodes:
  write: {_target_: outputs.write}
edges: [[START, write], [write, END]]
cases: {one: {x: 1}}
"""

NODES = """
import os
import threading
import time
from pathlib import Path

def write(state):
    Path("data").mkdir()
    for i in range(2000):
        Path(f"data/{i:04d}.txt").write_text(f"row {i}\\n")
    Path("big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    os.symlink("big.bin", "inside")
    os.symlink("/etc/hostname", "outside")
    os.symlink("no/such/file", "dangling")
    os.symlink("data", "dir_link")
    Path("vanishing").mkdir()
    for i in range(200):  # deleted by a thread while the step's commit walks them
        Path(f"vanishing/{i}").write_text("x")
    def remove():
        time.sleep(0.001)
        for i in range(200):
            Path(f"vanishing/{i}").unlink(missing_ok=True)
    threading.Thread(target=remove, daemon=True).start()
    return {"x": state["x"] + 1}
"""


@pytest.mark.slow
def test_links_many_files_and_vanishing_files_are_committed_as_they_were(tmp_path):
    (tmp_path / "conf/workflow").mkdir(parents=True)
    (tmp_path / "conf/workflow/outputs.yaml").write_text(WORKFLOW)
    (tmp_path / "outputs.py").write_text(textwrap.dedent(NODES))
    run_bench(tmp_path, "-m", "workflow=outputs")
    [run] = runs(tmp_path)
    assert run["status"] == "completed", run
    hostname = Path("/etc/hostname").read_bytes()
    dest = tmp_path / "restored"
    restore = wtb(tmp_path, "restore", run["run_id"], "--to", str(dest))
    assert restore.returncode == 0, restore.stderr
    case = dest / "one"
    links = {name: os.readlink(case / name) for name in ("inside", "outside", "dangling",
                                                         "dir_link")}
    assert links == {"inside": "big.bin", "outside": "/etc/hostname",
                     "dangling": "no/such/file", "dir_link": "data"}
    assert all((case / name).is_symlink() for name in links), "a link was followed"
    assert Path("/etc/hostname").read_bytes() == hostname, "a restore wrote through a link"
    assert len(list((case / "data").iterdir())) == 2000
    written = Path(run["job_dir"], "out/one/big.bin").read_bytes()
    assert (case / "big.bin").read_bytes() == written and len(written) == 3 * 1024 * 1024
    # whatever of `vanishing/` a commit caught is whole; nothing half-read was stored
    for path in (case / "vanishing").glob("*") if (case / "vanishing").exists() else ():
        assert path.read_text() == "x"
    assert_nothing_lost(tmp_path)

