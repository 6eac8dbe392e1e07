"""Benchmark: tiny-JiT calibration on the embedded default (local executor), several runs.

    .venv/bin/python bench/calibration_local.py [--runs 5] [--spec examples/tiny-jit-cpu.yaml]
        [--spike AFTER_S:FOR_S]

For each run: wall time of the whole `plan-job calibrate` command, the steps it took, the CI
it reached and why it stopped, torch's threads, and the steady step beside the plain mean
of the steady steps; then medians. Targets: wall < 30 s, CI <= 2%.

--spike 4:3 starts a busy loop on one core 4 s into each calibration and stops it 3 s later:
a transient load spike, to see what it does to the steady step (issue 19: one stretched a
calibration's mean to 48.9 ms against a 25.9 ms median).
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
    parser.add_argument("--spike", metavar="AFTER_S:FOR_S", help="a busy core during each run")
    args = parser.parse_args()
    spike = tuple(float(x) for x in args.spike.split(":")) if args.spike else None
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            calibration = subprocess.Popen(
                [str(PLAN_JOB), "calibrate", str(args.spec.resolve()), "-o", "c.yaml"],
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if spike is not None:
                _burn(calibration, *spike)
            if calibration.wait() != 0:
                raise SystemExit(f"run {i + 1}: plan-job calibrate exited {calibration.returncode}")
            wall = time.perf_counter() - start
            m = load_record(Path(tmp) / "c.yaml").measurement
        rows.append(
            (
                i + 1,
                wall,
                m.steps_run,
                m.warmup_steps,
                m.step_mean_s * 1e3,
                (getattr(m, "step_raw_mean_s", 0.0) or m.step_mean_s) * 1e3,
                m.step_median_s * 1e3,
                m.step_ci_relative * 100,
                m.startup_s,
                m.stopped_by,
                getattr(m, "torch_threads", 0) or "-",
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
                "plain mean ms",
                "median ms",
                "CI %",
                "start-up s",
                "stopped by",
                "threads",
            ),
            floatfmt=".3g",
        )
    )
    print(
        f"median wall {statistics.median(r[1] for r in rows):.1f} s (target < 30 s), "
        f"median CI {statistics.median(r[7] for r in rows):.2f}% (target <= 2%), "
        f"runs reaching the CI target: {sum(r[9] == 'ci_target' for r in rows)}/{len(rows)}; "
        f"step / median: up to {max(r[4] / r[6] for r in rows):.2f}x, plain mean / median: "
        f"up to {max(r[5] / r[6] for r in rows):.2f}x"
    )


def _burn(calibration: subprocess.Popen[bytes], after_s: float, for_s: float) -> None:
    """A busy loop on one core from ``after_s`` into the calibration for ``for_s``."""
    deadline = time.monotonic() + after_s
    while time.monotonic() < deadline and calibration.poll() is None:
        time.sleep(0.05)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(for_s)
    finally:
        burner.kill()
        burner.wait()


if __name__ == "__main__":
    main()
