"""Memory benchmark: peak RSS of committing and restoring big outputs, and of committing many
small files.

    python benchmarks/memory_bench.py [--sizes 300M,1G,2G] [--small-files 100000]
                                      [--small-size 1024] [--tmp /tmp]

Each case runs in a fresh process, so one case's peak is not another's. The process first
commits and restores a one-file directory (imports, SQLAlchemy's caches, the store's schema):
its peak RSS then is the baseline; the figures are the peak after the commit and after the
restore (ru_maxrss), their growth over the baseline, and the throughput. The outputs are
written (os.urandom, 1 MiB at a time) by this process before the case starts, into a temp dir
under --tmp, and removed after it: a 2 GiB case needs 6 GiB free (output, blob, restore).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
UNITS = {"K": 1 << 10, "M": MIB, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(work: Path, case: str) -> dict[str, float]:
    """One case, in this (fresh) process: the figures, as JSON on stdout."""
    from wtb_conf.store import open_store

    store = open_store(str(work / "wtb.db"), work / "blobs")
    warm = work / "warm"
    warm.mkdir()
    (warm / "f").write_bytes(b"warm up")
    store.restore(store.commit_dir(warm), work / "warm-restored")
    out = {"baseline_mb": peak_mb()}
    t = time.perf_counter()
    commit = store.commit_dir(work / "src")
    out["commit_s"] = time.perf_counter() - t
    out["commit_peak_mb"] = peak_mb()
    out["files"] = store.last_commit.files
    if case == "small":
        t = time.perf_counter()
        store.commit_dir(work / "src")  # unchanged: the stat cache answers
        out["again_s"] = time.perf_counter() - t
    else:
        t = time.perf_counter()
        store.restore(commit, work / "restored")
        out["restore_s"] = time.perf_counter() - t
        out["restore_peak_mb"] = peak_mb()
    store.close()
    return out


def make_big(src: Path, size: int) -> None:
    src.mkdir()
    with open(src / "output.bin", "wb") as f:
        left = size
        while left:
            f.write(os.urandom(min(MIB, left)))
            left -= min(MIB, left)


def make_small(src: Path, count: int, size: int) -> None:
    for i in range(count):
        sub = src / f"d{i % 100:02d}"
        if i < 100:
            sub.mkdir(parents=True)
        (sub / f"f{i:06d}").write_bytes(os.urandom(size))


def run_case(tmp: str, case: str, make) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=tmp, prefix="wtb-memory-bench-") as d:
        work = Path(d)
        make(work / "src")
        proc = subprocess.run([sys.executable, __file__, "--child", case, str(work)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"case {case} failed:\n{proc.stderr}")
        return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="300M,1G,2G", help="big outputs, one file each")
    ap.add_argument("--small-files", type=int, default=100_000)
    ap.add_argument("--small-size", type=int, default=1024, help="bytes per small file")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where outputs are written")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[1]), args.child[0])))
        return

    free = shutil.disk_usage(args.tmp).free
    print(f"{args.tmp}: {free / (1 << 30):.1f} GiB free; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} cpus")
    print(f"{'output':>10}{'baseline':>10}{'commit peak':>13}{'delta':>8}{'MB/s':>8}"
          f"{'restore peak':>14}{'delta':>8}{'MB/s':>8}")
    for text in filter(None, args.sizes.split(",")):
        size = parse_size(text)
        if 3 * size > free:
            print(f"{text:>10}  skipped: needs {3 * size / (1 << 30):.1f} GiB free")
            continue
        r = run_case(args.tmp, "big", lambda src, size=size: make_big(src, size))
        mb = size / 1e6
        print(f"{text:>10}{r['baseline_mb']:8.0f}MB{r['commit_peak_mb']:11.0f}MB"
              f"{r['commit_peak_mb'] - r['baseline_mb']:+6.0f}MB{mb / r['commit_s']:8.0f}"
              f"{r['restore_peak_mb']:12.0f}MB{r['restore_peak_mb'] - r['baseline_mb']:+6.0f}MB"
              f"{mb / r['restore_s']:8.0f}")
    if args.small_files:
        r = run_case(args.tmp, "small",
                     lambda src: make_small(src, args.small_files, args.small_size))
        print(f"\n{r['files']} files of {args.small_size} bytes: first commit "
              f"{r['commit_s']:.1f} s ({r['files'] / r['commit_s']:.0f} files/s), unchanged "
              f"{r['again_s']:.1f} s; peak RSS {r['commit_peak_mb']:.0f} MB "
              f"({r['commit_peak_mb'] - r['baseline_mb']:+.0f} MB over the baseline "
              f"{r['baseline_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
