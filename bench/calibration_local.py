"""Benchmark: tiny-JiT calibration on the embedded default (local executor), several runs.

    .venv/bin/python bench/calibration_local.py [--runs 5] [--spec examples/tiny-jit-cpu.yaml]

For each run: wall time of the whole `plan-job calibrate` command, the steps it took, the CI
it reached and why it stopped; then medians. Targets: wall < 30 s, CI <= 2%.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
PLAN_JOB = Path(sys.executable).parent / "plan-job"


def main() -> None:
    from planner.calibration.record import load_record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "tiny-jit-cpu.yaml")
    args = parser.parse_args()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run(
                [str(PLAN_JOB), "calibrate", str(args.spec.resolve()), "-o", "c.yaml"],
                cwd=tmp,
                check=True,
                capture_output=True,
            )
            wall = time.perf_counter() - start
            m = load_record(Path(tmp) / "c.yaml").measurement
        rows.append(
            (
                i + 1,
                wall,
                m.steps_run,
                m.warmup_steps,
                m.step_mean_s * 1e3,
                m.step_ci_relative * 100,
                m.startup_s,
                m.stopped_by,
            )
        )
    print(
        tabulate(
            rows,
            headers=(
                "run",
                "wall s",
                "steps",
                "warm-up",
                "step ms",
                "CI %",
                "start-up s",
                "stopped by",
            ),
            floatfmt=".3g",
        )
    )
    print(
        f"median wall {statistics.median(r[1] for r in rows):.1f} s (target < 30 s), "
        f"median CI {statistics.median(r[5] for r in rows):.2f}% (target <= 2%), "
        f"runs reaching the CI target: {sum(r[7] == 'ci_target' for r in rows)}/{len(rows)}"
    )


if __name__ == "__main__":
    main()
