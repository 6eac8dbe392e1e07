"""Compatibility shim: ``jobs.runtime`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.runtime import ...`` keeps working; new code imports the new paths."""

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
