"""Moved to jobs.contract.checkpoint_owner.

This old path only re-exports its names, so that ``from jobs.checkpoint_owner import ...``
keeps working; new code imports the new path."""

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
