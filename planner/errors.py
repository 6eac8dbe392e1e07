"""plan-job's errors. The library raises these; only planner.cli turns them into exit codes.

BadInputError and its subclasses mean the user must change something (exit 2).
JobError and its subclasses mean a job did not do its work (exit 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class PlanJobError(Exception):
    """Base of every error plan-job raises on purpose."""


class BadInputError(PlanJobError):
    """The input (spec, flag, record) is wrong; nothing was submitted or written."""


class SpecError(BadInputError):
    """One field of a run spec is wrong: names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str, source: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: got {value!r}; {allowed}")


class UnknownKeysError(SpecError):
    """Keys the schema does not know: a typo must not pass silently."""

    def __init__(
        self, section: str, unknown: Iterable[str], valid: Iterable[str], source: str | None = None
    ) -> None:
        unknown = sorted(unknown)
        valid = sorted(valid)
        field = f"{section}.{unknown[0]}" if section else unknown[0]
        close = close_match(unknown[0], valid)
        hint = f"did you mean {close!r}? " if close else ""
        super().__init__(
            field,
            unknown[0] if len(unknown) == 1 else unknown,
            f"unknown key; {hint}valid keys here are: {', '.join(valid)}",
            source,
        )
        self.suggestion = close


def close_match(word: str, candidates: Iterable[str], cutoff: float = 0.75) -> str | None:
    """The candidate ``word`` is most likely a misspelling of, if any is close enough."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return found[0] if found else None


class SlurmUnavailableError(BadInputError):
    """--executor slurm was asked for on a machine without a working Slurm client."""


class JobError(PlanJobError):
    """A submitted job failed, was cancelled or never started."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        log_path: Path | None = None,
        stderr_tail: str = "",
    ) -> None:
        self.job_id = job_id
        self.log_path = log_path
        self.stderr_tail = stderr_tail
        super().__init__(message)


class JobFailedError(JobError):
    """The job ran and raised (import error, OOM, a bug in the workload)."""


class OutOfMemoryError(JobFailedError):
    """The workload ran out of device memory; names the micro-batch it failed at."""


class PendingTimeoutError(JobError):
    """The job stayed pending past the limit and was cancelled."""


class CancelledByUserError(JobError):
    """Ctrl-C: the job plan-job submitted was cancelled."""


class CommandError(PlanJobError):
    """A shell command (sbatch, squeue, ...) failed; carries everything needed to debug it."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {' '.join(argv)!r} exited {returncode}: {stderr.strip() or stdout.strip()}"
        )
