"""Where a run's jobs leave it: the running segment's stop and the queued chain's reach.

A running job ends at squeue's %e ($SLURM_JOB_END_TIME inside it); plan-job's training stops
one step, one save and STOP_MARGIN_S before that, or at the signal (signal_lead_s before).
A pending segment starts when Slurm says (`squeue --start`'s %S, for a job it has placed);
one Slurm gives no start for (waiting on its dependency) becomes eligible when the one
before it ends and then waits the partition's median wait (P90 for the P95), from its recent
accounting (planner.slurm.queue_waits); it pays its resume cost. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from planner.eta.source import Source
from planner.eta.steps import SteadyStepTime
from planner.model.plan import PlanFacts
from planner.runs.emit import STOP_MARGIN_S
from planner.runs.progress import History
from planner.shell import command_text
from planner.slurm.queue import SlurmJob
from planner.slurm.queue_waits import QueueWaits


@dataclass(frozen=True)
class SegmentOutlook:
    """The running job: where it stops and whether its next checkpoint comes first."""

    job_id: str
    state: str
    end_time: float | None
    end_source: str
    stop_time: float | None  # when the training is expected to stop stepping (its stop rule)
    save_s: float  # the stop save after it, which must end before end_time
    stop_step_p50: int | None
    stop_step_p95: int | None
    finishes_run: bool  # reaches total_steps before its stop (at P50)
    next_checkpoint_step: int | None
    next_checkpoint_time: float | None
    next_checkpoint_in_time: bool | None


@dataclass(frozen=True)
class ChainOutlook:
    segments: int  # jobs in jobs.yaml (0: none recorded)
    ended: int
    running: int
    pending: int
    enough_p50: bool
    enough_p95: bool
    finish_segment_p50: int | None  # 1-based segment of jobs.yaml that finishes the run
    end_step_p50: int  # where the queued jobs leave the run
    end_step_p95: int
    missing_steps_p50: int
    missing_steps_p95: int
    end_time_p50: float | None  # when the last queued job is expected to end
    advice: str | None


def stop_reserve(step: SteadyStepTime, save_s: float, plan: PlanFacts | None) -> float:
    """How long before its end a segment stops stepping: plan-job's training leaves one
    step, one save and STOP_MARGIN_S, or stops at the signal, whichever is earlier. Without
    a plan the training is assumed to run to the end and save there."""
    if plan is None:
        return save_s
    rule = STOP_MARGIN_S + step.slowest_recent_s + save_s
    return max(rule, plan.signal_lead_s or 0.0)


@dataclass(frozen=True)
class Queued:
    segment: int | None  # 1-based in jobs.yaml, if known
    job_id: str
    limit_s: int | None  # its --time in seconds (squeue's, else the plan's)
    start_time: float | None  # set when it already runs (but has not written yet)
    end_time: float | None
    expected_start: float | None = None  # Slurm's estimate while it is pending (squeue %S)
    waits: tuple[float, float] = (0.0, 0.0)  # wait once eligible without one: P50, P95


@dataclass(frozen=True)
class Simulation:
    finish: float | None  # None: the queued jobs do not reach total_steps
    finish_segment: int | None  # 1-based segment of jobs.yaml that reaches total_steps
    end_step: int  # where the run is when the last simulated job ends (total if finished)
    end_time: float | None  # when the last queued job is expected to end, if short
    stop_step_current: int | None  # where the running job stops (total if it finishes)
    stop_time_current: float | None  # when its stop rule ends its stepping
    resumes: int  # queued jobs started before the finish


def running_job(source: Source, queue: dict[str, SlurmJob]) -> SlurmJob | None:
    current = source.history.current.job_id
    if current and current in queue and queue[current].running:
        return queue[current]
    runners = [job for job in queue.values() if job.running]
    return runners[0] if runners else None


def pending_jobs(
    source: Source, queue: dict[str, SlurmJob], writer: SlurmJob | None
) -> list[Queued]:
    """The run's queued jobs other than the one writing now, in chain order."""
    listed: list[tuple[int | None, str]] = [(job.segment, job.job_id) for job in source.chain]
    if not listed and source.job is not None:
        listed = [(None, source.job.job_id)]
    plan = source.plan
    out = []
    for segment, job_id in listed:
        job = queue.get(job_id)
        if job is None or not job.active or (writer is not None and job_id == writer.job_id):
            continue
        limit = job.time_limit_s
        if limit is None and plan and segment and segment <= len(plan.segment_limits_s):
            limit = plan.segment_limits_s[segment - 1]
        # One that runs already but has not written yet keeps its real start and end.
        started = job.running
        start = job.start_time if started else None
        expected = None if started else job.start_time
        out.append(
            Queued(segment, job_id, limit, start, job.end_time if started else None, expected)
        )
    return out


def with_waits(pending: Sequence[Queued], waits: QueueWaits | None) -> list[Queued]:
    """The partition's waits on each pending job Slurm gives no start for."""
    if waits is None or not waits.known:
        return list(pending)
    p50, p90 = waits.median_s or 0.0, waits.p90_s or 0.0
    return [
        replace(job, waits=(p50, p90))
        if job.start_time is None and job.expected_start is None
        else job
        for job in pending
    ]


def segment_of(source: Source, job_id: str) -> int | None:
    return next((job.segment for job in source.chain if job.job_id == job_id), None)


def simulate(
    per_step: float,
    start: tuple[float, int],
    current: tuple[int | None, float] | None,
    pending: Sequence[Queued],
    total: int,
    reserve: float,
    resume_each: float,
    save_s: float,
    band: int = 0,
) -> Simulation:
    """Walk the running job (its segment and end) and the queued ones at ``per_step``
    seconds a step, saves included; each queued job starts when Slurm expects it, else when
    the previous one ends and its wait (``band``: 0 the P50, 1 the P95) has passed."""
    t, step = start
    stop_step = stop_time = None
    if current is not None:
        segment, end = current
        stop_time = end - reserve
        if step + (stop_time - t) / per_step >= total:
            finish = t + (total - step) * per_step
            return Simulation(finish, segment, total, None, total, stop_time, 0)
        step += max(int((stop_time - t) / per_step), 0)
        stop_step = step
        t = max(stop_time, t) + save_s
    resumes = 0
    for job in pending:
        if job.limit_s is None:
            break  # an unlimited or unknown --time: nothing can be said past it
        if job.start_time is not None:
            begin = job.start_time
        elif job.expected_start is not None:
            begin = max(t, start[0], job.expected_start)
        else:
            begin = max(t, start[0]) + job.waits[band]
        stops = (job.end_time or begin + job.limit_s) - reserve
        first = begin + resume_each
        resumes += 1
        if step + (stops - first) / per_step >= total:
            finish = first + (total - step) * per_step
            return Simulation(finish, job.segment, total, None, stop_step, stop_time, resumes)
        step += max(int((stops - first) / per_step), 0)
        t = max(stops, first) + save_s
    return Simulation(None, None, step, t, stop_step, stop_time, resumes)


def segment_outlook(
    running: SlurmJob,
    sims: tuple[Simulation, Simulation],
    history: History,
    step: SteadyStepTime,
    interval: int | None,
    save_s: float,
) -> SegmentOutlook:
    p50, p95 = sims
    at, last = history.last_time, history.done_step
    next_step = next_time = in_time = None
    if interval and at is not None:
        next_step = min((last // interval + 1) * interval, history.total_steps)
        next_time = at + (next_step - last) * step.mean_s + save_s
        # The save must be on disk before the stop rule ends the stepping (the stop save
        # would cover it anyway, but a killed job keeps only what was saved).
        in_time = p50.stop_time_current is None or next_time <= p50.stop_time_current + save_s
    return SegmentOutlook(
        job_id=running.job_id,
        state=running.state,
        end_time=running.end_time,
        end_source="squeue %e" if running.source == "squeue" else running.source,
        stop_time=p50.stop_time_current,
        save_s=save_s,
        stop_step_p50=p50.stop_step_current,
        stop_step_p95=p95.stop_step_current,
        finishes_run=p50.stop_step_current == history.total_steps,
        next_checkpoint_step=next_step,
        next_checkpoint_time=next_time,
        next_checkpoint_in_time=in_time,
    )


def chain_outlook(
    source: Source,
    queue: dict[str, SlurmJob],
    sims: tuple[Simulation, Simulation],
    total: int,
) -> ChainOutlook:
    p50, p95 = sims
    states = [queue.get(job.job_id) for job in source.chain]
    running = sum(1 for s in states if s is not None and s.running)
    pending = sum(1 for s in states if s is not None and s.active and not s.running)
    missing50 = 0 if p50.finish is not None else total - p50.end_step
    missing95 = 0 if p95.finish is not None else total - p95.end_step
    folder = source.run_dir or source.target
    advice = None
    if missing50:
        advice = (
            f"{missing50:,} steps will be missing when the queued jobs end: add segments with "
            f"`{command_text('plan-job', 'resubmit', folder)}`"
        )
    elif missing95:
        advice = (
            f"enough at P50, but {missing95:,} steps short at P95: consider "
            f"`{command_text('plan-job', 'resubmit', folder)}` once the last segment runs"
        )
    return ChainOutlook(
        segments=len(source.chain),
        ended=len(states) - running - pending,
        running=running,
        pending=pending,
        enough_p50=p50.finish is not None,
        enough_p95=p95.finish is not None,
        finish_segment_p50=p50.finish_segment,
        end_step_p50=p50.end_step,
        end_step_p95=p95.end_step,
        missing_steps_p50=missing50,
        missing_steps_p95=missing95,
        end_time_p50=p50.end_time,
        advice=advice,
    )
