"""Moved to jobs.contract.measurement.

This old path only re-exports its names, so that ``from jobs.measurement import ...``
keeps working; new code imports the new path."""

from jobs.contract.measurement import (
    FAILURE_MARKER,
    JOB_END_FILE,
    JOB_START_ENV,
    STOP_REASONS,
    CalibrationFailed,
    CalibrationRequest,
    Measurement,
    failure_message,
    parse_failure,
)

__all__ = [
    "FAILURE_MARKER",
    "JOB_END_FILE",
    "JOB_START_ENV",
    "STOP_REASONS",
    "CalibrationFailed",
    "CalibrationRequest",
    "Measurement",
    "failure_message",
    "parse_failure",
]
