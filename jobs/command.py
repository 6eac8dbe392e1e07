"""Compatibility shim: ``jobs.command`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.command import ...`` keeps working; new code imports the new paths."""

from jobs.training.command import (
    EXIT_FAILED,
    EXIT_OK,
    POLL_S,
    STOP_SIGNALS,
    TrainerStateRelay,
    describe_status,
    field_values,
    finite,
    resume_from,
    run_training,
    spawn,
    stop,
    wait_group,
    world_size,
)

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
