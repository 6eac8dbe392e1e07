"""Compatibility shim: ``jobs.allreduce_timing`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.allreduce_timing import ...`` keeps working; new code imports the new paths."""

from jobs.calibration.allreduce_timing import (
    BUDGET_PER_SIZE_S,
    DIVISORS,
    FP32_BYTES,
    MAX_REPEATS,
    MIN_REPEATS,
    WARMUP,
    time_allreduces,
)

__all__ = [
    "BUDGET_PER_SIZE_S",
    "DIVISORS",
    "FP32_BYTES",
    "MAX_REPEATS",
    "MIN_REPEATS",
    "WARMUP",
    "time_allreduces",
]
