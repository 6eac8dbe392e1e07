"""Why a submitted run has no progress line yet: still queued, or its jobs already ended.

A run whose first job failed within seconds (an older run's checkpoint in checkpoint.dir, a
wrong Python) writes no progress line, and eta, resubmit, tighten and history used to say it
was "still queued or starting". The chain's jobs are asked for: queued ones are named with
squeue's state and reason; ended ones with their final state from sacct (scontrol, or their
log, where accounting is missing), exit code, log path and the log's last lines. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.clock import moment_text
from planner.errors import PlanJobError, RunFailedError, RunNotStartedError, SlurmUnavailableError
from planner.runs.diagnosis import diagnose
from planner.runs.inferred_outcome import job_log_text, with_inferred
from planner.runs.run_folder import SubmittedJob, job_log_path, plan_facts
from planner.shell import command_text
from planner.slurm.accounting import JobOutcome, job_outcomes
from planner.slurm.chain_starts import queued_starts
from planner.slurm.queue import Runner, SlurmJob, queued
from planner.slurm.queue_waits import partition_waits
from planner.spec.run_spec import PlanSpec
from planner.units import fmt_duration

TAIL_LINES = 15


def no_progress_error(
    folder: Path, chain: Sequence[SubmittedJob], runner: Runner | None = None
) -> PlanJobError | None:
    """What to tell about a run folder with submitted jobs and no progress line; None when
    Slurm cannot be asked and no job left a log (nothing to tell beyond 'no progress')."""
    ids = [job.job_id for job in chain]
    segment = {job.job_id: job.segment for job in chain}
    try:
        queue = queued(ids, runner)
    except SlurmUnavailableError:
        queue = None
    if queue:
        active = [queue[i] for i in ids if i in queue and queue[i].active]
        if active:
            job = active[0]
            reason = f" ({job.reason})" if job.reason else ""
            starts = _expected_starts(folder, active, segment, runner)
            return RunNotStartedError(
                f"{folder}: no progress line yet: segment {segment[job.job_id]} (job "
                f"{job.job_id}) is {job.state}{reason}; try again once it has run some steps, "
                f"or follow it with `{command_text('plan-job', 'eta', folder, '--watch')}`"
                + "".join(f"\n  {line}" for line in starts)
            )
    ended = [i for i in ids if not queue or i not in queue]
    accounting = job_outcomes(ended, runner) if queue is not None else None
    outcomes = with_inferred(accounting, ended, {}, folder) if accounting else None
    logs = {i: job_log_path(folder.resolve(), i) for i in ended}
    if outcomes is None and not any(logs.values()):
        return None
    lines = [
        f"  segment {segment[i]}, job {i}: "
        + _describe(outcomes.outcomes.get(i) if outcomes is not None else None)
        for i in ended
    ]
    # The log shown is the first job's that left one: the later ones of an afterany chain
    # usually failed the same way.
    shown = next((i for i in ended if logs[i] is not None), ended[0] if ended else None)
    log = logs.get(shown) if shown else None
    text = job_log_text(folder.resolve(), shown) if log and shown else None
    failed = [o for o in (outcomes.outcomes.values() if outcomes else ()) if o.state != "COMPLETED"]
    what = failed[0].state if failed else "ended"
    shown_outcome = outcomes.outcomes.get(shown) if outcomes is not None and shown else None
    found = diagnose(shown, shown_outcome, None, text, log) if shown else None
    cause = f"\njob {shown}: {found.why}" if found is not None and found.cause else ""
    return RunFailedError(
        f"{folder}: the run's jobs ended ({what}) without training a step: none of them got "
        f"past its start\n"
        + "\n".join(lines)
        + cause
        + "\nfix the cause the log shows, then submit "
        "again",
        job_id=shown,
        log_path=log,
        stderr_tail="\n".join((text or "").rstrip().splitlines()[-TAIL_LINES:]),
    )


@dataclass(frozen=True)
class _Pending:
    segment: int | None
    job_id: str
    limit_s: int | None
    start_time: float | None
    expected_start: float | None
    waits: tuple[float, float]


def _expected_starts(
    folder: Path, active: Sequence[SlurmJob], segment: dict[str, int], runner: Runner | None
) -> list[str]:
    """One line per queued segment: when it is expected to start, and from what."""
    plan = plan_facts(folder)
    waits = None
    startless = any(job.start_time is None and not job.running for job in active)
    if startless and plan is not None and plan.partition and plan.nodes:
        days = plan.queue_history_days or PlanSpec().queue_history_days
        waits = partition_waits(plan.partition, plan.nodes, days, runner)
    median = waits.median_s or 0.0 if waits is not None and waits.known else 0.0
    p90 = waits.p90_s or 0.0 if waits is not None and waits.known else 0.0
    pending = [
        _Pending(
            segment.get(job.job_id),
            job.job_id,
            job.time_limit_s,
            job.start_time if job.running else None,
            None if job.running else job.start_time,
            (median, p90) if job.start_time is None else (0.0, 0.0),
        )
        for job in active
    ]
    now = time.time()
    running_end = [j.end_time for j in active if j.running and j.end_time]
    lines = []
    for q in queued_starts(pending, max([now, *running_end]), waits):
        when = moment_text(q.start, now) if q.start is not None else "unknown"
        lines.append(f"segment {q.segment} (job {q.job_id}) starts {when}: {q.source}")
    return lines


def _describe(outcome: JobOutcome | None) -> str:
    if outcome is None:
        return "state unknown (no Slurm client here)"
    text = outcome.state
    words = outcome.exit_text
    if words is not None and words != f"exit {outcome.exit_code}":
        text += f", {words}"  # a signal, by name
    elif outcome.exit_code is not None:
        text += f", exit code {outcome.exit_code}"
    if outcome.elapsed_s is not None:
        text += f", ran {fmt_duration(outcome.elapsed_s)}"
    text += f" ({outcome.source}{', inferred' if outcome.inferred else ''})"
    return text
