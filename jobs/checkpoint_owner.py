"""Compatibility shim: ``jobs.checkpoint_owner`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.checkpoint_owner import ...`` keeps working; new code imports the new paths."""

from jobs.contract.checkpoint_owner import (
    CHECKPOINT_RE,
    FORMAT,
    OWNER_FILE,
    Owner,
    read_owner,
    saved_files,
    write_owner,
)

__all__ = [
    "CHECKPOINT_RE",
    "FORMAT",
    "OWNER_FILE",
    "Owner",
    "read_owner",
    "saved_files",
    "write_owner",
]
