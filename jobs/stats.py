"""Compatibility shim: ``jobs.stats`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.stats import ...`` keeps working; new code imports the new paths."""

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
