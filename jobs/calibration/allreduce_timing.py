"""Timing all-reduces across the calibration's ranks, so that the planner can fit the latency
and bandwidth of the collective that averages the gradients once per optimizer step.

Every rank calls it at the same point (each call is collective), on the process group's own
backend and device. torch is imported inside: this module is imported before torch is.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from jobs.contract.failure import CollectiveFailed
from jobs.node.group import Group

FP32_BYTES = 4
# Fractions of the gradient timed: sizes a factor 4 apart separate the fixed cost of an
# all-reduce (latency) from its cost per byte (bandwidth). Smallest first.
DIVISORS = (16, 4, 1)
WARMUP = 2  # untimed runs of each size: connections, NCCL's lazy set-up, the allocator
MIN_REPEATS, MAX_REPEATS = 3, 9
# Fewer timed repetitions once they would take longer than this: a large gradient over a
# slow link (gloo over TCP) must not eat the calibration job's time limit.
BUDGET_PER_SIZE_S = 5.0


def time_allreduces(
    group: Group, params: int, device: Any, sync: Callable[[], None]
) -> tuple[tuple[int, float], ...]:
    """(bytes, median seconds) of an all-reduce (sum) of 1/16, 1/4 and all of ``params`` fp32
    values, in increasing bytes; () in a world of one process.

    Each repetition starts after a barrier (a one-value all-reduce, waited for), so it times
    the exchange rather than the ranks' arrival. Every rank times every repetition and the
    result is the largest of the ranks' medians, the same on every rank: in a training step
    the slowest rank's exchange is what the others wait for.
    """
    if group.size == 1:
        return ()
    import torch
    import torch.distributed as dist

    def collective(what: str, run: Callable[[], Any]) -> None:
        try:
            run()
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0]  # torch appends its C++ stack
            raise CollectiveFailed(
                f"timing all-reduces: {what} failed ({type(exc).__name__}: {first}): another "
                f"rank failed or was killed (its own error names it), or did not get here "
                f"within {group.world.timeout_s:.0f} s"
            ) from exc

    def agree_max(value: float) -> float:
        box = torch.tensor([value], dtype=torch.float64, device=device)
        collective("agreeing on a time", lambda: dist.all_reduce(box, op=dist.ReduceOp.MAX))
        return float(box.item())

    largest = max(params, 1)
    # One buffer, sliced for the smaller sizes. All ranks learn whether every rank has it
    # before any waits on it: an out-of-memory on one rank would leave the others hanging.
    try:
        buffer = torch.zeros(largest, dtype=torch.float32, device=device)
    except RuntimeError:  # torch.cuda.OutOfMemoryError is one
        buffer = None
    if agree_max(0.0 if buffer is not None else 1.0) > 0.0 or buffer is None:
        return ()
    barrier = torch.zeros(1, dtype=torch.float32, device=device)

    def once(values: Any) -> float:
        collective("a barrier", lambda: dist.all_reduce(barrier))
        sync()
        start = time.perf_counter()
        collective(
            f"an all-reduce of {values.numel() * FP32_BYTES} bytes", lambda: dist.all_reduce(values)
        )
        sync()
        return time.perf_counter() - start

    found = []
    for divisor in DIVISORS:
        values = buffer[: max(largest // divisor, 1)]
        for _ in range(WARMUP - 1):
            once(values)
        # The last warm-up, agreed, sets the repetitions: every rank derives the same number
        # from the same time, and they must all run the same collectives.
        warm_s = agree_max(once(values))
        fit = int(BUDGET_PER_SIZE_S / max(warm_s, 1e-9))
        repeats = min(MAX_REPEATS, max(MIN_REPEATS, fit))
        median = statistics.median([once(values) for _ in range(repeats)])
        found.append((values.numel() * FP32_BYTES, agree_max(median)))
    return tuple(found)
