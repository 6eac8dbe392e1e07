"""Compatibility shim: ``jobs.trainer_state`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.trainer_state import ...`` keeps working; new code imports the new paths."""

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
