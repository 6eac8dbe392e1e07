"""Where a run stands once its jobs have ended: their final states, the newest checkpoint,
and the pace the run itself showed. What resubmit decides from, and history records.

The newest checkpoint. The training writes ckpt-NNNNNNNNN.pt atomically (temp file, fsync,
rename), then a `checkpoint` progress line: a checkpoint file without its line (killed in
between) is whole, a line without its file was pruned or deleted. Whether a file loads can
only be checked with torch, which the login node does without: the newest non-empty file is
taken, and the next job (jobs.train.newest_readable) falls back to an older one should it be
torn. Torch-free.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs.contract.train_config import TrainConfig
from planner.errors import BadInputError, SlurmUnavailableError
from planner.eta.source import Source, load_source
from planner.followup.pace import RunPace, job_timings, measure_pace
from planner.followup.preview import unread_job_facts
from planner.model.plan import Plan
from planner.runs.diagnosis import Diagnosis, diagnose_job
from planner.runs.inferred_outcome import infer_outcome, with_inferred
from planner.runs.job_log import JobLog
from planner.runs.progress import History
from planner.runs.run_folder import SubmittedJob, load_plan, load_train_config
from planner.slurm.accounting import Accounting, JobOutcome, job_outcomes
from planner.slurm.queue import Runner, SlurmJob, queued

_CHECKPOINT_RE = re.compile(r"ckpt-(\d{9,})\.pt")


@dataclass(frozen=True)
class CheckpointState:
    step: int  # where the next job resumes (0: from scratch)
    path: Path | None
    nbytes: int
    logged_step: int | None  # the progress file's newest `checkpoint` line
    note: str


@dataclass(frozen=True)
class JobSteps:
    job_id: str
    from_step: int
    last_step: int
    stop_reason: str | None

    @property
    def steps(self) -> int:
        return max(self.last_step - self.from_step, 0)


@dataclass(frozen=True)
class Attempt:
    """One run of one job: a requeued job (node failure, preemption) runs more than once, each
    attempt with its own state, restart count and lines in the progress file."""

    job_id: str
    outcome: JobOutcome
    log: JobLog | None  # its lines in the progress file (None: it wrote none)
    diagnosis: Diagnosis

    @property
    def restarts(self) -> int:
        return self.outcome.restarts

    @property
    def from_step(self) -> int:
        return self.log.start_step if self.log is not None else 0

    @property
    def steps(self) -> int:
        return max(self.log.last_step - self.log.start_step, 0) if self.log is not None else 0

    @property
    def learnable(self) -> bool:
        """Its steps say what the run's step costs: it stopped cleanly (done, at the signal or
        the stop time), not hung, failed or killed."""
        return (
            self.log is not None
            and self.log.stop_reason in ("done", "signal", "time_limit")
            and not self.diagnosis.failed
        )


@dataclass(frozen=True)
class RunState:
    run_dir: Path
    plan: Plan
    train: TrainConfig
    source: Source
    active: tuple[SlurmJob, ...]  # jobs of the run still queued or running
    accounting: Accounting  # ended jobs, inferred where Slurm no longer tells
    last: JobOutcome | None  # the job that ran last
    job_steps: dict[str, JobSteps]
    checkpoint: CheckpointState
    pace: RunPace
    notes: tuple[str, ...]
    unread: tuple[str, ...] = ()  # facts a preview without Slurm could not read (preview.py)
    attempts: tuple[Attempt, ...] = ()  # of the ended jobs, oldest first

    @property
    def last_attempt(self) -> Attempt | None:
        """The newest attempt of the job that ran last."""
        if self.last is None:
            return None
        mine = [a for a in self.attempts if a.job_id == self.last.job_id]
        return mine[-1] if mine else None

    @property
    def history(self) -> History:
        return self.source.history

    @property
    def chain(self) -> tuple[SubmittedJob, ...]:
        return self.source.chain

    @property
    def total_steps(self) -> int:
        return self.train.total_steps

    @property
    def done(self) -> bool:
        return self.checkpoint.step >= self.total_steps


def inspect_run(target: str, runner: Runner | None = None, preview: bool = False) -> RunState:
    """Read a run folder (or the folder of a job id) and ask Slurm about its jobs.

    ``preview``: without a working Slurm client, go on from the folder alone and list what
    could not be read in RunState.unread (resubmit --dry-run)."""
    source = load_source(target, runner=runner)
    if source.run_dir is None or source.history.kind != "progress":
        raise BadInputError(
            f"{target}: not a run folder written by `plan-job emit` (resubmit needs its "
            f"plan.yaml, train.json and progress.jsonl); pass the run folder or a job id of it"
        )
    run_dir = source.run_dir.resolve()
    plan = load_plan(run_dir)
    train = load_train_config(run_dir)
    history = source.history
    ids = [job.job_id for job in source.chain]
    ids += [job.job_id for job in history.jobs if job.job_id]
    if source.job is not None:
        ids.append(source.job.job_id)
    ids = list(dict.fromkeys(ids))
    unread: tuple[str, ...] = ()
    try:
        queue = queued(ids, runner)
    except SlurmUnavailableError as exc:
        if not preview:
            raise
        queue, unread = {}, unread_job_facts(str(exc))
    active = tuple(queue[i] for i in ids if i in queue and queue[i].active)
    ended = [i for i in ids if i not in {job.job_id for job in active}]
    logs = {job.job_id: job for job in history.jobs if job.job_id}
    accounting = with_inferred(job_outcomes(ended, runner), ended, logs, run_dir)
    starts = {
        o.job_id: o.start_time
        for o in accounting.outcomes.values()
        if o.start_time is not None and not o.inferred
    }
    pace = measure_pace(
        history,
        plan,
        job_timings(history),
        starts,
        train.checkpoint_interval_steps,
        train.eval_interval_steps,
        history.evals,
    )
    notes = [n for n in (accounting.missing_note(),) if n]
    checkpoint_dir = Path(train.checkpoint_dir)
    attempts = tuple(
        Attempt(job_id, outcome, log, diagnose_job(run_dir, job_id, outcome, log, checkpoint_dir))
        for job_id, outcome, log in _attempt_logs(ended, accounting, history)
    )
    return RunState(
        run_dir=run_dir,
        plan=plan,
        train=train,
        source=source,
        active=active,
        accounting=accounting,
        last=_last_job(accounting, history, source.chain),
        job_steps={
            job.job_id: JobSteps(job.job_id, job.start_step, job.last_step, job.stop_reason)
            for job in history.jobs
            if job.job_id
        },
        checkpoint=(
            newest_logged_checkpoint(history.checkpoint_lines)
            if train.work.command
            else newest_checkpoint(Path(train.checkpoint_dir), history)
        ),
        pace=pace,
        notes=tuple(notes),
        unread=unread,
        attempts=attempts,
    )


def _attempt_logs(
    job_ids: Sequence[str], accounting: Accounting, history: History
) -> list[tuple[str, JobOutcome, JobLog | None]]:
    """Each ended job's attempts (sacct -D) with its lines in the progress file, oldest
    first. A requeued job's runs each have a start line with its job id: where Slurm lists
    fewer attempts than those (no accounting: scontrol knows one), the others are read from
    their lines (infer_outcome), so that every attempt that wrote is one."""
    found: list[tuple[str, JobOutcome, JobLog | None]] = []
    for job_id in job_ids:
        attempts = accounting.all_attempts(job_id)
        logs = [job for job in history.jobs if job.job_id == job_id]
        paired = [(o, _log_of(o, i, attempts, logs)) for i, o in enumerate(attempts)]
        used = {id(log) for _, log in paired if log is not None}
        unpaired = [log for log in logs if id(log) not in used]
        for index, log in enumerate(unpaired):
            inferred = dataclasses.replace(infer_outcome(job_id, log, None), restarts=index)
            paired.insert(index, (inferred, log))
        if unpaired:  # restart counts follow the order once the progress file adds runs
            paired = [
                (dataclasses.replace(o, restarts=i), log) for i, (o, log) in enumerate(paired)
            ]
        found += [(job_id, outcome, log) for outcome, log in paired]
    return sorted(found, key=lambda item: _start_key(item[1], item[2]))


def _log_of(
    outcome: JobOutcome,
    index: int,
    attempts: Sequence[JobOutcome],
    logs: Sequence[JobLog],
) -> JobLog | None:
    """The progress lines of attempt ``index``: by count when they match one for one, else
    the newest that started within the attempt (an attempt killed at once wrote none)."""
    if len(logs) == len(attempts):
        return logs[index]
    if outcome.start_time is None:
        return logs[-1] if logs and index == len(attempts) - 1 else None
    end = outcome.end_time if outcome.end_time is not None else float("inf")
    inside = [
        log
        for log in logs
        if log.start_time is not None and outcome.start_time - 60 <= log.start_time <= end
    ]
    return inside[-1] if inside else None


def _start_key(outcome: JobOutcome, log: JobLog | None) -> tuple[float, int]:
    start = outcome.start_time
    if start is None and log is not None:
        start = log.start_time
    return (start if start is not None else float("inf"), outcome.restarts)


def newest_checkpoint(folder: Path, history: History) -> CheckpointState:
    logged = [step for step, _ in history.saves]
    logged_step = logged[-1] if logged else None
    files = sorted(
        (
            (int(m.group(1)), path)
            for path in (folder.iterdir() if folder.is_dir() else ())
            if (m := _CHECKPOINT_RE.fullmatch(path.name))
        ),
        reverse=True,
    )
    empty: list[str] = []
    for step, path in files:
        size = _size(path)
        if size > 0:
            return CheckpointState(step, path, size, logged_step, _note(step, logged_step, empty))
        empty.append(path.name)
    where = f"no checkpoint in {folder}"
    if logged_step is not None:
        where += f" (the progress file names one of step {logged_step:,}: deleted or moved?)"
    if empty:
        where += f"; empty (torn) files: {', '.join(empty)}"
    return CheckpointState(0, None, 0, logged_step, where + ": the run starts again from step 0")


def newest_logged_checkpoint(lines: Sequence[tuple[int | None, str]]) -> CheckpointState:
    """A user command's checkpoints are in its own format and naming: the progress file's
    ``checkpoint`` lines say which it saved (the newest CHECKPOINT_LINES_KEPT of them, (step,
    path)); the newest whose path still exists counts."""
    logged_step = lines[-1][0] if lines else None
    missing: list[str] = []
    for step, name in reversed(lines):
        path = Path(name)
        if step is None:
            continue  # a line that names no step cannot be resumed from
        if path.exists():
            note = f"step {step:,}: the newest checkpoint line whose path exists ({path})"
            if missing:
                note += f"; missing on disk: {', '.join(missing)}"
            return CheckpointState(step, path, _size(path), logged_step, note)
        missing.append(str(path))
    where = "no checkpoint line in the progress file"
    if missing:
        where = f"none of the progress file's checkpoint paths exists ({', '.join(missing)})"
    return CheckpointState(0, None, 0, logged_step, where + ": the run starts again from step 0")


def _note(step: int, logged: int | None, empty: Sequence[str]) -> str:
    text = f"step {step:,}: the newest non-empty checkpoint file"
    if logged == step:
        text += ", also the progress file's newest checkpoint line"
    elif logged is None or step > logged:
        text += (
            " (no progress line for it: the job was killed right after the save; checkpoints "
            "are renamed into place whole, so it counts)"
        )
    else:
        text += f" (the progress file's newest, step {logged:,}, is missing or empty on disk)"
    if empty:
        text += f"; skipped empty (torn) files: {', '.join(empty)}"
    return text + (
        ". Not loaded here (the login node has no torch): if it is torn, the next job falls "
        "back to the one before"
    )


def _last_job(
    accounting: Accounting, history: History, chain: Sequence[SubmittedJob]
) -> JobOutcome | None:
    """The job that started last; the progress file's newest writer if no start is known.

    A job cancelled while pending has a start time in scontrol (the moment it was cancelled)
    but never ran: only jobs that ran for some time or wrote progress count."""
    wrote = {job.job_id for job in history.jobs if job.job_id}
    started = [
        o
        for o in accounting.outcomes.values()
        if o.start_time is not None and (o.job_id in wrote or (o.elapsed_s or 0) > 0)
    ]
    if started:
        return max(started, key=lambda o: o.start_time or 0.0)
    for job_id in (history.current.job_id, chain[-1].job_id if chain else None):
        if job_id and job_id in accounting.outcomes:
            return accounting.outcomes[job_id]
    return None


def _size(path: Path) -> int:
    """Bytes of a file, or of the files in a folder (a Trainer's checkpoint-N)."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0
