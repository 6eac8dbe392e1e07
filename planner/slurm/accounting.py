"""How the jobs of a run ended: sacct, else scontrol, else the job's log and progress lines.

sacct (the accounting database) keeps a job's final state, exit code and elapsed time for
good, and with --duplicates every attempt of a requeued job (a node failure, a preemption,
`scontrol requeue`), oldest first: each is an attempt with its own state, numbered as Slurm's
restart count. Its ExitCode is "code:signal"; a job whose training was killed by a signal
shows it after the colon, on the job or on its srun step (a batch script that exits with the
shell's 128 + n shows n before the colon, which the job's log tells apart). Sites run without
it (no slurmdbd, or AccountingStorageType=none) or it can fail; then
`scontrol show job` still knows a job for MinJobAge after its end (300 s by default), with
the same state. Past that, the job's own output and progress lines tell
(planner.runs.inferred_outcome, which fills in what Slurm no longer knows). Every answer says
where it came from, and what was inferred is marked so. Torch-free.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

from planner.errors import CommandError
from planner.shell import run_command
from planner.slurm.queue import (
    Runner,
    parse_scontrol_job,
    parse_slurm_time,
    parse_time_limit,
)

# Submit and Eligible last: the queue wait is Eligible to Start (a chained segment becomes
# eligible when the one before it ends), what the history compares with the predicted wait.
SACCT_FIELDS = "JobID,State,ExitCode,Start,End,ElapsedRaw,Timelimit,NNodes,Submit,Eligible"
# States in which Slurm itself signalled the job's processes.
SLURM_ENDED = ("TIMEOUT", "CANCELLED", "PREEMPTED", "NODE_FAIL", "REQUEUED", "DEADLINE")


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    state: str  # Slurm's name (TIMEOUT, COMPLETED, ...); "UNKNOWN" when nothing tells
    source: str  # sacct, scontrol, job log, progress log
    inferred: bool  # the state is a reading of indirect evidence, not Slurm's record
    exit_code: int | None = None
    start_time: float | None = None
    end_time: float | None = None
    elapsed_s: float | None = None
    time_limit_s: int | None = None
    nodes: int | None = None
    note: str | None = None
    signal: int | None = None  # the signal that ended it (ExitCode after the colon, or a step's)
    restarts: int = 0  # Slurm's restart count of this attempt: 0 for the job's first run
    # When it was submitted and when it became eligible to start (Unix seconds; a requeued
    # attempt's are its requeue's), as sacct or scontrol tell; None when neither does.
    submit_time: float | None = None
    eligible_time: float | None = None

    @property
    def exit_text(self) -> str | None:
        """The exit status in words: "exit 1", "killed by SIGKILL". Where Slurm ended the job
        itself (its time limit, a cancel, a requeue), the signal it sent says nothing more
        than the state does."""
        signum = None if self.state in SLURM_ENDED else self.signal
        return exit_text(self.exit_code, signum)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_text(code: int | None, signum: int | None) -> str | None:
    if signum:
        return f"killed by {signal_name(signum)}"
    if code is None:
        return None
    if code > 128 and code - 128 < 65:  # a shell's (or srun's) report of a signal death
        return f"exit {code} (killed by {signal_name(code - 128)})"
    return f"exit {code}"


@dataclass(frozen=True)
class Accounting:
    outcomes: dict[str, JobOutcome]  # the newest attempt of each job
    sacct_error: str | None  # why sacct gave nothing; None when it answered
    # Every attempt of each job that sacct knows, oldest first (a job requeued twice: three).
    attempts: dict[str, tuple[JobOutcome, ...]] = field(default_factory=dict)

    def all_attempts(self, job_id: str) -> tuple[JobOutcome, ...]:
        """The job's attempts; its one outcome where sacct did not list them."""
        found = self.attempts.get(job_id)
        if found:
            return found
        return (self.outcomes[job_id],) if job_id in self.outcomes else ()

    def missing_note(self) -> str | None:
        if self.sacct_error is None:
            return None
        sources = sorted({o.source for o in self.outcomes.values()})
        return (
            f"no accounting (sacct: {self.sacct_error}): final states, exit codes and elapsed "
            f"times come from {', '.join(sources) or 'nowhere'}; scontrol forgets a job "
            f"MinJobAge after its end, and what the job log and progress file suggest is "
            f"marked as inferred"
        )


def parse_sacct_outcomes(text: str) -> dict[str, JobOutcome]:
    """Outcomes by job id from `sacct -n -P -o SACCT_FIELDS` output: each job's newest attempt."""
    return {job_id: found[-1] for job_id, found in parse_sacct_attempts(text).items()}


def parse_sacct_attempts(text: str) -> dict[str, tuple[JobOutcome, ...]]:
    """Every attempt by job id from `sacct -D -n -P -o SACCT_FIELDS` output, oldest first.

    Without -X, each job's row is followed by its steps' (``ID.batch``, ``ID.0``): a step
    killed by a signal (the training under srun) gives the attempt its signal."""
    found: dict[str, list[JobOutcome]] = {}
    current: JobOutcome | None = None
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 8:
            continue
        job_id, state, exit_code, start, end, elapsed, limit, nodes = parts[:8]
        submit, eligible = (parts[8], parts[9]) if len(parts) >= 10 else ("", "")
        if "." in job_id:  # a step of the attempt above
            step_signal = _exit_signal(exit_code)
            ours = current is not None and job_id.split(".")[0] == current.job_id
            if current is not None and ours and step_signal and not current.signal:
                current = _replace_signal(found, current, step_signal)
            continue
        attempts = found.setdefault(job_id, [])
        current = JobOutcome(
            job_id=job_id,
            state=state.split()[0] if state.strip() else "UNKNOWN",  # "CANCELLED by 0"
            source="sacct",
            inferred=False,
            exit_code=_exit_code(exit_code),
            start_time=parse_slurm_time(start),
            end_time=parse_slurm_time(end),
            elapsed_s=float(elapsed) if elapsed.strip().isdigit() else None,
            time_limit_s=parse_time_limit(limit),
            nodes=int(nodes) if nodes.strip().isdigit() else None,
            signal=_exit_signal(exit_code),
            restarts=len(attempts),
            submit_time=parse_slurm_time(submit),
            eligible_time=parse_slurm_time(eligible),
        )
        attempts.append(current)
    return {job_id: tuple(attempts) for job_id, attempts in found.items()}


def _replace_signal(
    found: dict[str, list[JobOutcome]], current: JobOutcome, signum: int
) -> JobOutcome:
    changed = dataclasses.replace(current, signal=signum)
    found[current.job_id][-1] = changed
    return changed


def outcome_from_scontrol(text: str) -> JobOutcome | None:
    fields = parse_scontrol_job(text)
    if not fields.get("JobId"):
        return None
    start, end = parse_slurm_time(fields.get("StartTime", "")), None
    state = fields.get("JobState", "") or "UNKNOWN"
    if state not in ("PENDING", "RUNNING"):
        end = parse_slurm_time(fields.get("EndTime", ""))
    nodes = fields.get("NumNodes", "").split("-")[0]
    restarts = fields.get("Restarts", "")
    return JobOutcome(
        job_id=fields["JobId"],
        state=state,
        source="scontrol",
        inferred=False,
        exit_code=_exit_code(fields.get("ExitCode", "")),
        start_time=start,
        end_time=end,
        elapsed_s=parse_time_limit(fields.get("RunTime", "")),
        time_limit_s=parse_time_limit(fields.get("TimeLimit", "")),
        nodes=int(nodes) if nodes.isdigit() else None,
        signal=_exit_signal(fields.get("ExitCode", "")),
        restarts=int(restarts) if restarts.isdigit() else 0,
        submit_time=parse_slurm_time(fields.get("SubmitTime", "")),
        eligible_time=parse_slurm_time(fields.get("EligibleTime", "")),
    )


def job_outcomes(job_ids: Iterable[str], runner: Runner | None = None) -> Accounting:
    """What Slurm still knows of each job: sacct in one call, scontrol for the rest."""
    run = runner or run_command
    ids = [job_id for job_id in dict.fromkeys(job_ids) if job_id]
    if not ids:
        return Accounting({}, None)
    found: dict[str, JobOutcome] = {}
    attempts: dict[str, tuple[JobOutcome, ...]] = {}
    error = None
    try:
        # -D: every attempt of a requeued job; no -X: the steps, whose exit holds the signal.
        argv = ["sacct", "-D", "-n", "-P", "-j", ",".join(ids), "-o", SACCT_FIELDS]
        parsed = parse_sacct_attempts(run(argv).stdout)
        attempts = {k: v for k, v in parsed.items() if k in ids and v}
        found = {k: v[-1] for k, v in attempts.items()}
        if not found:
            error = "it knows none of these jobs"
    except CommandError as exc:
        lines = (exc.stderr or exc.stdout).strip().splitlines()
        error = lines[-1].strip() if lines else f"exit {exc.returncode}"
    for job_id in ids:
        if job_id in found:
            continue
        try:
            text = run(["scontrol", "-o", "show", "job", job_id]).stdout
        except CommandError:
            continue  # "Invalid job id": the controller has forgotten it too
        outcome = outcome_from_scontrol(text)
        if outcome is not None:
            found[job_id] = outcome
    return Accounting(found, error, attempts)


def _exit_code(text: str) -> int | None:
    code = text.strip().split(":")[0]
    return int(code) if code.isdigit() else None


def _exit_signal(text: str) -> int | None:
    """The signal of Slurm's "code:signal" (ExitCode), if one ended the job."""
    _, _, number = text.strip().partition(":")
    return int(number) if number.isdigit() and int(number) > 0 else None
