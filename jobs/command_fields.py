"""Moved to jobs.contract.command_fields.

This old path only re-exports its names, so that ``from jobs.command_fields import ...``
keeps working; new code imports the new path."""

from jobs.contract.command_fields import (
    ENV_PREFIX,
    FIELDS,
    REPORT_MODES,
    env_name,
    environment,
    fields_in,
    render,
)

__all__ = [
    "ENV_PREFIX",
    "FIELDS",
    "REPORT_MODES",
    "env_name",
    "environment",
    "fields_in",
    "render",
]
