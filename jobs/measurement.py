"""Moved to jobs.contract.measurement (and jobs.contract.failure).

This old path only re-exports its names, so that ``from jobs.measurement import ...``
keeps working; new code imports the new paths."""

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
