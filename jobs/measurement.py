"""Compatibility shim: ``jobs.measurement`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.measurement import ...`` keeps working; new code imports the new paths."""

from jobs.contract.failure import FAILURE_MARKER, failure_message, parse_failure
from jobs.contract.measurement import (
    JOB_END_FILE,
    JOB_START_ENV,
    STOP_REASONS,
    CalibrationRequest,
    Measurement,
)

__all__ = [
    "FAILURE_MARKER",
    "JOB_END_FILE",
    "JOB_START_ENV",
    "STOP_REASONS",
    "CalibrationRequest",
    "Measurement",
    "failure_message",
    "parse_failure",
]
