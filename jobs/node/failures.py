"""Why a training job ends with an error, in the words of jobs.contract.failure.CAUSES, and
the `failure` progress event that says it. Standard library only.

The login node sees a failed job's state and exit code; only the job itself can tell a full
disk from a device out of memory or a checkpoint that does not fit. It writes one `failure`
line just before it exits, so that eta, resubmit and history name the cause instead of
"killed or crashed".
"""

from __future__ import annotations

import errno
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.contract.failure import CheckpointMismatch, NodeError, Refusal
from jobs.progress import ProgressWriter

# NodeError kinds (jobs/) that name a cause of their own.
_KINDS = {"oom": "out_of_memory", "import_error": "import_error"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def cause_of(exc: BaseException) -> str:
    """The CAUSES name of ``exc`` (or of an exception it was raised from)."""
    for link in _chain(exc):
        if isinstance(link, Refusal):
            return link.cause
        if isinstance(link, CheckpointMismatch):
            return "checkpoint_mismatch"
        if isinstance(link, NodeError) and link.kind in _KINDS:
            return _KINDS[link.kind]
        if isinstance(link, MemoryError):
            return "host_out_of_memory"
        if isinstance(link, OSError) and link.errno == errno.ENOSPC:
            return "no_space"
        if type(link).__name__ == "OutOfMemoryError":  # torch.cuda's, without importing torch
            return "out_of_memory"
    return "exception"


def no_space_detail(folder: Path, needed: int) -> dict[str, Any]:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = 0
    return {"path": str(folder), "free_bytes": free, "needed_bytes": needed}


def write_failure(
    progress_path: str,
    step: int,
    cause: str,
    message: str,
    detail: dict[str, Any] | None = None,
    rank: int | None = None,
) -> None:
    """Append the `failure` line; a progress file that cannot take it (the disk that is full)
    costs a warning, never the exit status."""
    try:
        with ProgressWriter(progress_path) as progress:
            progress.failure(step, cause, message, detail, rank=rank)
    except OSError as exc:
        print(
            f"plan-job train: warning: no failure line in {progress_path}: {exc}", file=sys.stderr
        )
