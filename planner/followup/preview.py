"""`plan-job resubmit --dry-run` where Slurm cannot be asked (a laptop with a copy of the run
folder, a login node whose controller is down): the preview is made from the run folder alone
(plan.yaml, train.json, progress.jsonl, jobs.yaml, the checkpoints) and names each fact it
could not read, instead of refusing.

What it cannot read: whether a job of the run is still queued or running (and so the running
job's end), the jobs' final states from sacct or scontrol (they are inferred from the job
logs and the progress file, and marked so), and the partition's MaxTime (plan.yaml's, from
emit time, stands in when it has one). A real resubmission still needs Slurm. Torch-free.
"""

from __future__ import annotations

from planner.errors import SlurmUnavailableError
from planner.model.plan import Plan
from planner.slurm.partition import PartitionLimits, read_partition
from planner.slurm.queue import Runner
from planner.units import fmt_duration


def unread_job_facts(error: str) -> tuple[str, ...]:
    """What the preview could not read about the run's jobs, Slurm having answered ``error``."""
    return (
        f"whether a job of the run is still queued or running, and the running job's end "
        f"({_why(error)}); the preview takes every job as ended",
        "the jobs' final states, exit codes and elapsed times (sacct, scontrol): inferred "
        "from the job logs and the progress file, marked (inferred)",
    )


def preview_partition(
    plan: Plan, runner: Runner | None = None
) -> tuple[PartitionLimits, str, tuple[str, ...]]:
    """The partition's limits, where they came from (scontrol, plan.yaml or none) and what
    could not be read; raises nothing for a missing Slurm."""
    try:
        return read_partition(plan.spec.cluster.partition, runner), "scontrol", ()
    except SlurmUnavailableError as exc:
        error = _why(str(exc))
    recorded = plan.partition
    if recorded is not None:
        limit = recorded.max_time_s
        maximum = fmt_duration(limit) if limit is not None else "UNLIMITED"
        return (
            recorded,
            "plan.yaml",
            (
                f"the partition's MaxTime now ({error}): plan.yaml's from when the run was "
                f"emitted stands in, {maximum} on partition {recorded.name}",
            ),
        )
    name = plan.spec.cluster.partition or "(Slurm's default)"
    unknown = PartitionLimits(name, None, None, None, plan.nodes, 0, 0)
    return (
        unknown,
        "none",
        (
            f"the partition's MaxTime ({error}); plan.yaml has none either (emitted without "
            f"Slurm): the preview puts the rest in one job, which a MaxTime may split",
        ),
    )


def _why(error: str) -> str:
    """Slurm's failure without the advice to run on the login node: a preview is the answer."""
    return error.split(": run plan-job")[0]
