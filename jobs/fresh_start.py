"""Compatibility shim: ``jobs.fresh_start`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.fresh_start import ...`` keeps working; new code imports the new paths."""

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
