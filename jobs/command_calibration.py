"""Moved to jobs.calibration.command.

This old path only re-exports its names, so that ``from jobs.command_calibration import ...``
keeps working; new code imports the new path."""

from jobs.calibration.command import (
    ABORT_GRACE_S,
    ECHO_BYTES,
    POLL_S,
    TAIL_LINES,
    calibrate_command,
)

__all__ = [
    "ABORT_GRACE_S",
    "ECHO_BYTES",
    "POLL_S",
    "TAIL_LINES",
    "calibrate_command",
]
