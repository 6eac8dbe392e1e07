"""Moved to jobs.contract.train_config.

This old path only re-exports its names, so that ``from jobs.train_config import ...``
keeps working; new code imports the new path."""

from jobs.contract.train_config import DEVICES, FORMAT, TrainConfig

__all__ = [
    "DEVICES",
    "FORMAT",
    "TrainConfig",
]
