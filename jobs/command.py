"""Compatibility shim: ``jobs.command`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.command import ...`` keeps working; new code imports the new paths."""

from jobs.calibration.command_reports import finite
from jobs.contract.command_fields import field_values, world_size
from jobs.node.process import describe_status, spawn, stop, wait_group
from jobs.node.signals import STOP_SIGNALS
from jobs.training.command import EXIT_FAILED, EXIT_OK, POLL_S, resume_from, run_training
from jobs.training.trainer_relay import TrainerStateRelay

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "POLL_S",
    "STOP_SIGNALS",
    "TrainerStateRelay",
    "describe_status",
    "field_values",
    "finite",
    "resume_from",
    "run_training",
    "spawn",
    "stop",
    "wait_group",
    "world_size",
]
