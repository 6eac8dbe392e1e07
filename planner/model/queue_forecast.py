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
