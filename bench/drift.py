"""How steady is this machine's throughput? The same training step, timed in windows.

    .venv/bin/python bench/drift.py [--workload gpt] [--preset tiny] [--micro-batch 8]
                                    [--seconds 120] [--window 5]
                                    [--calibration-s 10 [20 ...]] [--run-s 180]

A plan extrapolates a calibration of a few seconds to a run of hours; it can be no closer
than the machine is to itself. This prints the mean step time of each window and the spread
of the window means (min, max, and max/min - 1): on a quiet, dedicated node it is a few
percent; where it is larger, a plan's error against a real run is bounded below by it,
whatever the time model does. With --seconds longer than --calibration-s plus --run-s it
also replays the accuracy benchmark's situation on the one trace: for each start (every
window), the mean step of a calibration-long stretch against the mean step of the run-long
stretch right after it, and prints the distribution of that error: the floor the host sets
under a plan's steps term. Figures only.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="gpt", choices=("gpt", "jit"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument(
        "--calibration-s", type=float, nargs="+", default=[10.0], help="one or more lengths"
    )
    parser.add_argument("--run-s", type=float, default=180.0)
    args = parser.parse_args()

    import torch

    from jobs.node import runtime
    from jobs.workloads.base import WorkloadConfig
    from jobs.workloads.registry import BUILTIN

    config = WorkloadConfig(
        preset=args.preset,
        overrides={},
        micro_batch=args.micro_batch,
        grad_accum=1,
        precision="fp32",
        device="cpu",
        seed=0,
    )
    builder = BUILTIN[args.workload].builder_path
    workload = runtime.build_workload(builder, config, torch.device("cpu"))
    print(
        f"{args.workload} {args.preset}, micro-batch {args.micro_batch}, "
        f"{torch.get_num_threads()} threads; {args.window:g} s windows",
        flush=True,
    )
    ends: list[float] = []  # each step's end, seconds from the first step's start
    means: list[float] = []
    origin = time.perf_counter()
    end = origin + args.seconds
    while time.perf_counter() < end:
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < args.window:
            float(workload.train_step(workload.next_batch()))
            ends.append(time.perf_counter() - origin)
            steps += 1
        means.append((time.perf_counter() - start) / steps)
        print(f"  window {len(means):3d}: {means[-1] * 1e3:7.2f} ms/step", flush=True)
    if len(means) > 2:
        steady = means[1:]  # the first window holds the warm-up
        low, high = min(steady), max(steady)
        print(
            f"window means after the first: median {statistics.median(steady) * 1e3:.2f} ms, "
            f"min {low * 1e3:.2f}, max {high * 1e3:.2f}, max/min - 1 = {high / low - 1:.1%}"
        )
    for calibration_s in args.calibration_s:
        replay(ends, args.window, calibration_s, args.run_s)


def mean_step(ends: list[float], start: float, stop: float) -> float | None:
    """Mean step time of the steps that ended in (start, stop]."""
    first = bisect.bisect_right(ends, start)
    last = bisect.bisect_right(ends, stop)
    if last - first < 2:
        return None
    return (ends[last - 1] - ends[first - 1 if first else 0]) / (last - first)


def replay(ends: list[float], window: float, calibration_s: float, run_s: float) -> None:
    """Calibration-long stretch then run-long stretch, from every window's start."""
    errors = []
    start = window  # after the warm-up window
    while start + calibration_s + run_s <= (ends[-1] if ends else 0.0):
        calibrated = mean_step(ends, start, start + calibration_s)
        run = mean_step(ends, start + calibration_s, start + calibration_s + run_s)
        if calibrated and run:
            errors.append(calibrated / run - 1)
        start += window
    if len(errors) < 3:
        return
    absolute = sorted(abs(e) for e in errors)
    print(
        f"calibration {calibration_s:g} s then run {run_s:g} s, {len(errors)} starts: "
        f"error median {statistics.median(errors):+.1%}, |error| median "
        f"{statistics.median(absolute):.1%}, 90th percentile "
        f"{absolute[int(0.9 * (len(absolute) - 1))]:.1%}, max {absolute[-1]:.1%}"
    )


if __name__ == "__main__":
    main()
