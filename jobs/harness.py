"""Moved to jobs.calibration.builtin.

This old path only re-exports its names, so that ``from jobs.harness import ...``
keeps working; new code imports the new path."""

from jobs.calibration.builtin import (
    CI_CHECK_EVERY_S,
    FAILURE_WAIT_S,
    StepLog,
    calibrate,
    cpu_name,
    job_start_s,
    process_age_s,
    rank_failure,
)

__all__ = [
    "CI_CHECK_EVERY_S",
    "FAILURE_WAIT_S",
    "StepLog",
    "calibrate",
    "cpu_name",
    "job_start_s",
    "process_age_s",
    "rank_failure",
]
