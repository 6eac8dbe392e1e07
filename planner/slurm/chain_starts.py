"""When each pending job of a chain is expected to start: Slurm's estimate where it has one
(`squeue --start`'s %S: a job it has placed in its plan), else, for a job waiting on its
dependency, when the job before it reaches its --time (plan-job's segments run until their
signal, except the last) plus the partition's median wait (planner.slurm.queue_waits).
Needs no step time: it holds before the first step. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from planner.slurm.queue_waits import QueueWaits
from planner.units import fmt_duration


class QueuedJob(Protocol):
    @property
    def segment(self) -> int | None: ...
    @property
    def job_id(self) -> str: ...
    @property
    def limit_s(self) -> int | None: ...  # its --time
    @property
    def start_time(self) -> float | None: ...  # set when it runs already
    @property
    def expected_start(self) -> float | None: ...  # Slurm's estimate while pending
    @property
    def waits(self) -> tuple[float, float]: ...  # once eligible, without a start: P50, P95


@dataclass(frozen=True)
class QueuedStart:
    """When a pending segment is expected to start, and where that comes from."""

    segment: int | None
    job_id: str
    start: float | None  # None: unknown (an unknown --time before it)
    source: str


def queued_starts(
    pending: Sequence[QueuedJob],
    free_at: float,
    waits: QueueWaits | None,
) -> tuple[QueuedStart, ...]:
    """Each pending segment's expected start, in chain order: Slurm's (squeue --start) where
    it gives one, else when the one before it reaches its --time (plan-job's segments run
    until their signal, except the last) plus the median wait. ``free_at``: when the running
    job ends (now when none runs). Needs no step time: it holds before the first step."""
    out = []
    t: float | None = free_at
    for job in pending:
        if job.start_time is not None:  # started, not written yet
            start, source = job.start_time, "running"
        elif job.expected_start is not None:
            start, source = job.expected_start, "Slurm's estimate (squeue --start)"
        elif t is None:
            start, source = None, "unknown: a job before it has no --time"
        else:
            wait = job.waits[0]
            start = t + wait
            if waits is not None and waits.known:
                why = f"+ median wait {fmt_duration(wait)} ({waits.source})"
            else:
                why = f"+ no wait counted ({waits.source if waits else 'waits unknown'})"
            source = f"when the job before it reaches its --time {why}"
        out.append(QueuedStart(job.segment, job.job_id, start, source))
        t = start + job.limit_s if start is not None and job.limit_s is not None else None
    return tuple(out)
