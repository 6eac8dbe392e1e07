"""Where a run stands for its ETA: done, running, pending or stopped; whether the job that
writes its file still steps; the step the rest starts from; and, for a job that ended without
a stop line, how it ended (planner.runs.diagnosis). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.eta.outlook import running_job
from planner.eta.source import Source
from planner.runs.diagnosis import Diagnosis, diagnose, diagnose_job
from planner.slurm.accounting import JobOutcome
from planner.slurm.queue import SlurmJob
from planner.slurm.queue_waits import QueueWaits

LOG_LINES_SHOWN = 5  # of a failed job's log, in the notes (--json: its diagnosis has 15)
# Lines the training writes as it ends without a stop line (issues 20/21's contract).
ENDING_EVENTS = ("hang", "failure", "chain_stopped")


@dataclass(frozen=True)
class SlurmView:
    """What the queue says about the run's jobs; jobs missing from ``queue`` have ended."""

    asked: tuple[str, ...]
    queue: dict[str, SlurmJob]
    error: str | None = None
    # How the newest job in the file ended, when it is no longer queued and wrote no stop line.
    ended: dict[str, JobOutcome] = field(default_factory=dict)
    # The partition's waits at the chain's node count, when a pending job has no start.
    waits: QueueWaits | None = None


@dataclass(frozen=True)
class Standing:
    """Where the run stands, from its file and what the queue says."""

    status: str  # done, running, pending, stopped
    done: bool
    # The job that writes the file still steps, so its newest line is where the run is;
    # otherwise the next job resumes from the newest checkpoint.
    live: bool
    known: bool  # the queue was read
    queue: dict[str, SlurmJob]
    writer: SlurmJob | None  # the running job that writes the file
    from_step: int  # where the rest starts
    diagnosis: Diagnosis | None  # how the newest job ended, when it wrote no stop line


def standing(source: Source, slurm: SlurmView | None, now: float, notes: list[str]) -> Standing:
    history = source.history
    current = history.current
    known = slurm is not None and slurm.error is None
    if slurm is not None and slurm.error:
        notes.append(f"segment and chain not checked: {slurm.error}")
    queue = slurm.queue if slurm is not None and known else {}

    running = running_job(source, queue)
    writer = running if running is not None and running.job_id == current.job_id else None
    done = history.done_step >= history.total_steps or current.stop_reason == "done"
    # The training's own last words (a hang, a failure, a stopped chain): it has ended.
    last_words = bool(current.events(*ENDING_EVENTS))
    if done:
        status = "done"
    elif known:
        active = any(job.active for job in queue.values())
        status = "running" if running else ("pending" if active else "stopped")
    else:
        status = "running" if current.stop_reason is None and not last_words else "stopped"
    writing = current.stop_reason is None and not last_words
    live = not done and (writer is not None or (not known and writing))
    diagnosis = None
    if not live and not done and current.stop_reason is None and history.kind == "progress":
        diagnosis = diagnose_newest(source, slurm, now)
        if diagnosis.orphan is not None:
            live = True  # a trainer still writes: the run is where its lines are
            if status == "stopped":
                status = "running"
    from_step = history.done_step if live or done else history.resumable_step
    if diagnosis is not None:
        notes += _diagnosis_notes(diagnosis, live, from_step)
    return Standing(status, done, live, known, queue, writer, from_step, diagnosis)


def diagnose_newest(source: Source, slurm: SlurmView | None, now: float) -> Diagnosis:
    """How the file's newest job ended: from its lines, and with a run folder its log, the
    run's trainer lock and what sacct said (SlurmView.ended)."""
    job = source.history.current
    outcome = slurm.ended.get(job.job_id or "") if slurm is not None else None
    if source.run_dir is not None and job.job_id:
        return diagnose_job(source.run_dir, job.job_id, outcome, job, source.checkpoint_dir, now)
    return diagnose(job.job_id, outcome, job, None, None, None, now)


def _diagnosis_notes(found: Diagnosis, live: bool, from_step: int) -> list[str]:
    if found.orphan is not None:
        return [found.orphan]
    if found.cause is None and found.state is None:
        lead = "the last job ended without a stop line (killed or crashed; nothing says why)"
    else:
        lead = found.headline()
    notes = [f"{lead}: the run resumes from its newest checkpoint, step {from_step:,}"]
    notes += list(found.notes)
    if found.last_line:
        notes.append(f"its last progress line: {found.last_line}")
    if found.log_tail:
        shown = found.log_tail[-LOG_LINES_SHOWN:]
        notes.append(f"its log ({found.log_path}), last {len(shown)} lines:")
        notes += [f"  {line}" for line in shown]
    return notes
