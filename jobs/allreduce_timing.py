"""Moved to jobs.calibration.allreduce_timing.

This old path only re-exports its names, so that ``from jobs.allreduce_timing import ...``
keeps working; new code imports the new path."""

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
