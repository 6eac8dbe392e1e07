"""What a plan predicted about the queue, as the history keeps it beside each job's actual
submit, eligible and start times (planner.history.database.record_plan's ``queue``).

Waits are durations, not clock times: a plan made at noon and submitted at six predicted
the same wait for its first segment, counted from when it became eligible (its submit, for
the first). So the history's predicted start of a job is its eligible time plus the wait
predicted for it, and the run's predicted finish is its first submit plus ``finish_p50_s``.
Every field may be missing (None): Slurm did not answer, or the plan predates the queue.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planner.model.plan import Plan


@dataclass(frozen=True)
class QueueForecast:
    # The first segment's wait from submit to start, at P50 and P95: what `sbatch
    # --test-only` said (its start minus when it was asked), or the wait model's.
    first_wait_s: float | None = None
    first_wait_p95_s: float | None = None
    # Each later segment's wait from eligible (the one before it ended) to start.
    wait_p50_s: float | None = None
    wait_p95_s: float | None = None
    # From the first submit to the run's last step: queue, run and the waits between, P50/P95.
    finish_p50_s: float | None = None
    finish_p95_s: float | None = None

    def job_wait(self, first: bool) -> tuple[float | None, float | None]:
        """(P50, P95) of the wait predicted for a run's first job or a later one."""
        if first:
            return self.first_wait_s, self.first_wait_p95_s
        return self.wait_p50_s, self.wait_p95_s


def forecast_of(plan: Plan) -> QueueForecast:
    """What ``plan`` predicted about the queue, as durations from when Slurm was asked
    (Plan.queue_checked_at): all None for a plan made without asking (no Slurm).

    The first segment's P95 wait is None: `sbatch --test-only` gives one moment, no band, and
    a point estimate stored as a P95 would make the history's coverage claim a band that was
    never predicted. The later segments' P95 is the partition's waits' own P95
    (QueueWaits.p95_s), not the P90 the plan's finish P95 adds: the history judges a wait
    against the P95 it stores, so a P90 there would make "within P95" mean "within P90". A
    one-segment plan predicted no wait between segments (a requeue's wait is not modelled):
    None, not the zero its finish counts."""
    asked = plan.queue_checked_at
    if asked is None:
        return QueueForecast()

    def since_asked(moment: float | None) -> float | None:
        return None if moment is None else max(moment - asked, 0.0)

    between = len(plan.segments) > 1 and plan.wait_jobs > 0
    return QueueForecast(
        first_wait_s=since_asked(plan.start_time),
        first_wait_p95_s=None,
        wait_p50_s=plan.wait_median_s if between else None,
        wait_p95_s=plan.wait_p95_s if between else None,
        finish_p50_s=since_asked(plan.finish_p50),
        finish_p95_s=since_asked(plan.finish_p95),
    )
