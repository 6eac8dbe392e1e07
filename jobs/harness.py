"""Compatibility shim: ``jobs.harness`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.harness import ...`` keeps working; new code imports the new paths."""

from jobs.calibration.builtin import calibrate
from jobs.calibration.host import cpu_name, job_start_s, process_age_s
from jobs.calibration.rank_failure import FAILURE_WAIT_S, rank_failure
from jobs.calibration.steps import CI_CHECK_EVERY_S, StepLog

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
