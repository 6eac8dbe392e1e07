"""Moved to jobs.calibration.stats.

This old path only re-exports its names, so that ``from jobs.stats import ...``
keeps working; new code imports the new path."""

from jobs.calibration.stats import (
    BATCH,
    SLOWDOWN_RATIO,
    Slowdown,
    SteadyEstimate,
    mean_ci,
    mser_truncation,
    slowdowns,
    steady_estimate,
    t_quantile_975,
    warmup_cut,
)

__all__ = [
    "BATCH",
    "SLOWDOWN_RATIO",
    "Slowdown",
    "SteadyEstimate",
    "mean_ci",
    "mser_truncation",
    "slowdowns",
    "steady_estimate",
    "t_quantile_975",
    "warmup_cut",
]
