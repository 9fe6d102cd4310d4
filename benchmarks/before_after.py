"""One benchmark, before and after a change, side by side (issue #23: the house's regroup must
leave launcher_bench, compare_bench and store_bench unchanged or better).

    git clone -q . /tmp/before && git -C /tmp/before checkout REV
    cp -a .venv /tmp/before-venv && /tmp/before-venv/bin/pip install -q --no-deps -e /tmp/before
    python benchmarks/before_after.py --before /tmp/before --python /tmp/before-venv/bin/python \
        store_bench.py --repeat 5

Runs BENCH (a script of benchmarks/) in the `--before` checkout with its interpreter, then in
this checkout with this one, alternating, --runs times. A bench prints its own table; every
line of the last "after" run whose shape (the line with its numbers blanked) is also in the
"before" run is printed with both sets of numbers and their ratios, after / before: below 1
is faster (or smaller). The before tree runs its own copy of the bench, so a bench that reaches
into the code base (compare_bench builds its store with the Store's own methods) measures each
tree on its own terms.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def shape(line: str) -> str:
    return NUMBER.sub("#", line).strip()


def numbers(line: str) -> list[float]:
    return [float(n.replace(",", "")) for n in NUMBER.findall(line)]


def run(python: str, tree: Path, bench: str, args: list[str]) -> str:
    print(f"$ {python} {tree / 'benchmarks' / bench} {' '.join(args)}", flush=True)
    proc = subprocess.run([python, str(tree / "benchmarks" / bench), *args], cwd=tree,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{bench} in {tree} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def side_by_side(before: str, after: str) -> list[str]:
    """Each line of `after` beside the line of `before` of the same shape, with ratios."""
    earlier = {shape(line): line for line in before.splitlines() if NUMBER.search(line)}
    out = []
    for line in after.splitlines():
        old = earlier.get(shape(line))
        if old is None or not NUMBER.search(line):
            out.append(line)
            continue
        pairs = zip(numbers(old), numbers(line), strict=True)
        ratios = " ".join("=" if a == b else f"{b / a:.2f}x" if a else "-" for a, b in pairs)
        out.append(f"{line}\n{'':4}before: {old.strip()}\n{'':4}after/before: {ratios}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the older tree")
    ap.add_argument("--python", required=True, help="the interpreter the older tree runs with")
    ap.add_argument("--runs", type=int, default=1, help="alternating before/after runs")
    ap.add_argument("bench", help="a script of benchmarks/, e.g. store_bench.py")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="the bench's own arguments")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: at least 1 alternating run is needed")
    for _ in range(args.runs):
        before = run(args.python, args.before.resolve(), args.bench, args.args)
        after = run(sys.executable, ROOT, args.bench, args.args)
    print(f"\n{args.bench} {' '.join(args.args)}: after ({ROOT}) beside before "
          f"({args.before}), last of {args.runs} alternating run(s)")
    print("\n".join(side_by_side(before, after)))


if __name__ == "__main__":
    main()
