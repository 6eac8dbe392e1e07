"""Every error plan-job raises on purpose, in one place. The library raises these; only
planner.cli turns them into exit codes.

BadInputError and its subclasses mean the user must change something (exit 2): nothing was
submitted or written. JobError and its subclasses mean a job did not do its work (exit 1).
CommandError (a shell command failed) is neither until a caller decides (exit 1 if it gets out).
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class PlanJobError(Exception):
    """Base of every error plan-job raises on purpose."""


# What an error message echoes of a value: enough to recognise it, never the whole of a huge
# one (a 300-character name, a list of a million values, an alias bomb's expansion).
_ECHO = reprlib.Repr()
_ECHO.maxstring = 120
_ECHO.maxother = 120
_ECHO.maxlist = _ECHO.maxtuple = _ECHO.maxdict = _ECHO.maxset = 8
_ECHO.maxlevel = 3
ECHO_LIMIT = 200


def shown(value: Any) -> str:
    """repr(value) for a message, cut to ECHO_LIMIT characters without walking all of it."""
    text = _ECHO.repr(value)
    return text if len(text) <= ECHO_LIMIT else text[: ECHO_LIMIT - 3] + "..."


# --- bad input (exit 2) ---------------------------------------------------------------------


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
        super().__init__(f"{where}{field}: got {shown(value)}; {allowed}")


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


class RecordFieldError(SpecError):
    """A calibration record holds a value no calibration can have measured."""


class CalibrationMismatchError(SpecError):
    """The calibration record measured another workload, micro-batch or precision."""


class BatchSplitError(SpecError):
    """The global batch cannot be split evenly over the GPUs of a node count."""


class PartitionLimitError(SpecError):
    """The spec asks for more than the partition has, or its MaxTime allows no progress."""


class DeadlineError(SpecError):
    """No node count finishes within the deadline at P95."""


class SlurmUnavailableError(BadInputError):
    """Slurm cannot be asked here: no client, a client that cannot run, or (the subclass) a
    controller that does not answer. The planning commands go on without it; the ones that
    submit stop (exit 2)."""


class ControllerUnreachableError(SlurmUnavailableError):
    """Slurm's client is installed but its controller does not answer (or cannot be found)."""


class UnknownJobError(BadInputError):
    """Neither the controller nor the accounting database knows the job id."""


class RunFolderExistsError(BadInputError):
    """emit would overwrite an earlier run's scripts (and the record of their jobs)."""


class RunFolderBusyError(BadInputError):
    """Another plan-job process is writing the same run folder at this moment."""


class UnsafeRunFolderError(BadInputError):
    """The -o folder is one that --force must never replace."""


class NotARunFolderError(BadInputError):
    """The folder holds no emitted scripts, or no usable train.json."""


class PlanFileError(BadInputError):
    """plan.yaml is missing or is not what `plan-job emit` writes."""


class ForeignCheckpointsError(BadInputError):
    """checkpoint.dir holds checkpoints of another run; submitting would resume from them."""


class NoSpaceError(BadInputError):
    """checkpoint.dir has no room for the checkpoints the run keeps plus the one it writes."""


class NoProgressError(BadInputError):
    """A progress file that is missing or holds no line yet: nothing to estimate from."""


class RunNotStartedError(BadInputError):
    """The run's jobs are still queued: there is nothing to estimate from yet."""


class RefusedError(BadInputError):
    """Resubmitting would not help, or would break the run: the message says what to do."""


class HistoryError(BadInputError):
    """The history database cannot be opened, created or written."""


# --- a job did not do its work (exit 1) -----------------------------------------------------


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


class RunFailedError(JobFailedError):
    """Every job of the run ended without writing a progress line."""


class PendingTimeoutError(JobError):
    """The job stayed pending past the limit and was cancelled."""


class CancelledByUserError(JobError):
    """Ctrl-C: the job plan-job submitted was cancelled."""


class SubmissionError(JobError):
    """sbatch refused a segment; the segments already submitted were cancelled."""


# --- a shell command failed --------------------------------------------------------------------


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
