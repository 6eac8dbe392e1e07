"""Moved to jobs.training.trainer_state.

This old path only re-exports its names, so that ``from jobs.trainer_state import ...``
keeps working; new code imports the new path."""

from jobs.training.trainer_state import (
    STATE_FILE,
    CheckpointFolder,
    TrainerState,
    checkpoint_folders,
    describe,
    folder_step,
    list_checkpoints,
    loss_at,
    newest_checkpoint,
    read_state,
)

__all__ = [
    "STATE_FILE",
    "CheckpointFolder",
    "TrainerState",
    "checkpoint_folders",
    "describe",
    "folder_step",
    "list_checkpoints",
    "loss_at",
    "newest_checkpoint",
    "read_state",
]
