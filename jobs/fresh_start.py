"""Moved to jobs.calibration.fresh_start.

This old path only re-exports its names, so that ``from jobs.fresh_start import ...``
keeps working; new code imports the new path."""

from jobs.calibration.fresh_start import (
    BUDGET_SHARE,
    MAX_STEPS,
    MIN_BUDGET_S,
    TAIL_STEPS,
    TIMEOUT_S,
    FreshStart,
    measure,
    on_rank_0,
    plan_steps,
    warmup_beyond,
)

__all__ = [
    "BUDGET_SHARE",
    "MAX_STEPS",
    "MIN_BUDGET_S",
    "TAIL_STEPS",
    "TIMEOUT_S",
    "FreshStart",
    "measure",
    "on_rank_0",
    "plan_steps",
    "warmup_beyond",
]
