"""Benchmark: wall time of `plan-job --help` (login-node start-up), median of several runs.

    .venv/bin/python bench/startup.py [--runs 15]

Prints figures; asserts nothing about time (a shared 2-core machine would make that flaky).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

PLAN_JOB = Path(sys.executable).parent / "plan-job"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([str(PLAN_JOB), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    probe = (
        "import sys, planner.cli; heavy = ('torch', 'submitit', 'numpy', 'matplotlib'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"plan-job --help: median {statistics.median(times) * 1e3:.0f} ms, "
        f"min {min(times) * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms over {args.runs} runs "
        f"(target < 300 ms)"
    )
    print(f"heavy modules imported by planner.cli: {loaded} (torch and matplotlib: never)")


if __name__ == "__main__":
    main()
