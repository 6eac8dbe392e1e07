"""Compatibility shim: ``jobs.train_config`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.train_config import ...`` keeps working; new code imports the new paths."""

from jobs.contract.train_config import FORMAT, TrainConfig
from jobs.contract.work import DEVICES

__all__ = [
    "DEVICES",
    "FORMAT",
    "TrainConfig",
]
