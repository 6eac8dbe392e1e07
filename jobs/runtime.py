"""Moved to jobs.node.runtime.

This old path only re-exports its names, so that ``from jobs.runtime import ...``
keeps working; new code imports the new path."""

from jobs.node.runtime import (
    build_workload,
    evaluate,
    oom_failure,
    resolve_device,
    synchronizer,
    where,
)

__all__ = [
    "build_workload",
    "evaluate",
    "oom_failure",
    "resolve_device",
    "synchronizer",
    "where",
]
