"""Import time of the light modules (replab.verdict, replab.capture) in a fresh interpreter,
side by side with a baseline: importing the standard-library modules they build on.

The tests assert only that these modules import none of the heavy libraries
(tests/test_verdict.py, tests/test_capture_core.py); how long the import takes is measured
here. Target: ``import replab.verdict`` under 500 ms.

    .venv/bin/python bench/bench_import.py [-n 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

TARGET_MS = 500.0
MODULES = ("replab.verdict", "replab.capture")
BASELINE = "import json, dataclasses, pathlib, subprocess"
TIMED = ("import sys, time; t = time.perf_counter(); {stmt}; "
         "print(time.perf_counter() - t)")


def once(stmt: str) -> float:
    """Seconds the statement takes inside a new interpreter (its start not counted)."""
    out = subprocess.run([sys.executable, "-c", TIMED.format(stmt=stmt)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=15, help="runs per module (median reported)")
    args = ap.parse_args()
    took = {}
    for stmt in (BASELINE, *(f"import {m}" for m in MODULES)):
        once(stmt)  # warm-up: byte-compiled files written
        took[stmt] = statistics.median(once(stmt) for _ in range(args.n))
        ratio = took[stmt] / took[BASELINE]
        print(f"{stmt}: {took[stmt] * 1000:.1f} ms (median of {args.n}, {ratio:.1f}x baseline)")
    ok = took["import replab.verdict"] * 1000 < TARGET_MS
    print(f"target import replab.verdict < {TARGET_MS:.0f} ms: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
