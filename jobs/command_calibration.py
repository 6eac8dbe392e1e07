"""Compatibility shim: ``jobs.command_calibration`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.command_calibration import ...`` keeps working; new code imports the new paths."""

from jobs.calibration.command import ECHO_BYTES, calibrate_command
from jobs.calibration.command_run import ABORT_GRACE_S, POLL_S, TAIL_LINES

__all__ = [
    "ABORT_GRACE_S",
    "ECHO_BYTES",
    "POLL_S",
    "TAIL_LINES",
    "calibrate_command",
]
