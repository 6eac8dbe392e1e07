"""Compatibility shim: ``jobs.command_fields`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.command_fields import ...`` keeps working; new code imports the new paths."""

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
