"""How steady is this machine's throughput? The same training step, timed in windows.

    .venv/bin/python bench/drift.py [--workload gpt] [--preset tiny] [--micro-batch 8]
                                    [--seconds 120] [--window 5]

A plan extrapolates a calibration of a few seconds to a run of hours; it can be no closer
than the machine is to itself. This prints the mean step time of each window and the spread
of the window means (min, max, and max/min - 1): on a quiet, dedicated node it is a few
percent; where it is larger, a plan's error against a real run is bounded below by it,
whatever the time model does. Figures only.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()

    import torch

    from jobs import runtime
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
    means: list[float] = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < args.window:
            float(workload.train_step(workload.next_batch()))
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


if __name__ == "__main__":
    main()
