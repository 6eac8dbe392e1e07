"""What Slurm says about a job: its state, its end (expected while it runs), its batch script.

squeue answers for jobs in the queue; scontrol for a job the controller still remembers (it
names the batch script, which tells the run folder); sacct for one it has forgotten (its
working directory and submit line). Torch-free; every command goes through
planner.shell.run_command, or a runner the tests pass in.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from planner.errors import (
    CommandError,
    ControllerUnreachableError,
    SlurmUnavailableError,
    UnknownJobError,
)
from planner.shell import CommandResult, run_command
from planner.slurm.client import classify, client_status

Runner = Callable[[Sequence[str]], CommandResult]

SQUEUE_FORMAT = "%i|%T|%S|%e|%l|%r"
SACCT_FIELDS = "JobID,State,Start,End,Timelimit,WorkDir,SubmitLine"
# Set by Slurm (23.02+) inside a job: its end as Unix seconds, updated if the limit changes.
END_TIME_ENV = "SLURM_JOB_END_TIME"
# States in which a job may still run (or is running): everything else has ended.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)
JOB_ID_RE = re.compile(r"^\d+(?:_\d+)?$")
# scontrol -o writes Key=Value pairs separated by single spaces, but a value (a path) may hold
# spaces too: a new pair starts only where a capitalised key and "=" follow a space.
_SCONTROL_KEY_RE = re.compile(r"(?:^| )([A-Z][A-Za-z0-9/:_]*)=")
_DURATION_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    state: str  # RUNNING, PENDING, COMPLETED, TIMEOUT, ... ("" unknown)
    start_time: float | None  # Unix seconds; expected start while pending, if Slurm knows one
    end_time: float | None  # the end, or while running the expected end (its time limit)
    time_limit_s: int | None  # None: unlimited or unknown
    reason: str = ""  # squeue's reason while pending
    script: str | None = None  # the batch script's path
    workdir: str | None = None
    stdout: str | None = None
    source: str = "squeue"  # which command answered

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def running(self) -> bool:
        return self.state in ("RUNNING", "COMPLETING", "CONFIGURING")


def looks_like_job_id(text: str) -> bool:
    return bool(JOB_ID_RE.match(text.strip()))


def parse_slurm_time(text: str) -> float | None:
    """Unix seconds of a Slurm timestamp (local time, as squeue/scontrol/sacct print it)."""
    value = text.strip()
    if not value or value.upper() in ("N/A", "UNKNOWN", "NONE", "INVALID"):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp()  # a naive datetime is read as local time, as Slurm means it


def parse_time_limit(text: str) -> int | None:
    """Seconds in a Slurm duration ("3:00", "1-00:00:00"); None for UNLIMITED or unknown."""
    match = _DURATION_RE.match(text.strip())
    if not match:
        return None
    days, a, b, c = match.groups()
    if days is not None:
        return ((int(days) * 24 + int(a)) * 60 + int(b or 0)) * 60 + int(c or 0)
    if c is not None:
        return (int(a) * 60 + int(b)) * 60 + int(c)
    return int(a) * 60 + int(b or 0)


def parse_scontrol_job(text: str) -> dict[str, str]:
    """The Key=Value pairs of one `scontrol -o show job` line."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    matches = list(_SCONTROL_KEY_RE.finditer(line))
    fields = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following is not None else len(line)
        fields[match.group(1)] = line[match.end() : end].strip()
    return fields


def job_from_scontrol(text: str) -> SlurmJob:
    fields = parse_scontrol_job(text)
    return SlurmJob(
        job_id=fields.get("JobId", ""),
        state=fields.get("JobState", ""),
        start_time=parse_slurm_time(fields.get("StartTime", "")),
        end_time=parse_slurm_time(fields.get("EndTime", "")),
        time_limit_s=parse_time_limit(fields.get("TimeLimit", "")),
        reason=fields.get("Reason", ""),
        script=fields.get("Command") or None,
        workdir=fields.get("WorkDir") or None,
        stdout=fields.get("StdOut") or None,
        source="scontrol",
    )


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """Jobs by id from `squeue -h -o SQUEUE_FORMAT` output."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6:
            continue
        job_id, state, start, end, limit, reason = parts[:6]
        jobs[job_id] = SlurmJob(
            job_id=job_id,
            state=state,
            start_time=parse_slurm_time(start),
            end_time=parse_slurm_time(end),
            time_limit_s=parse_time_limit(limit),
            reason=reason,
        )
    return jobs


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """Jobs by id from `sacct -X -n -P -o SACCT_FIELDS` output."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 6)
        if len(parts) < 7:
            continue
        job_id, state, start, end, limit, workdir, submit = parts
        jobs[job_id] = SlurmJob(
            job_id=job_id,
            # "CANCELLED by 0": the state is the first word.
            state=state.split()[0] if state.strip() else "",
            start_time=parse_slurm_time(start),
            end_time=parse_slurm_time(end),
            time_limit_s=parse_time_limit(limit),
            script=_script_of(submit, workdir),
            workdir=workdir or None,
            source="sacct",
        )
    return jobs


def queued(job_ids: Iterable[str], runner: Runner | None = None) -> dict[str, SlurmJob]:
    """The jobs among ``job_ids`` that are still in the queue (pending or running).

    A job missing from the answer has ended. Raises SlurmUnavailableError without a usable
    Slurm client.
    """
    ids = [job_id for job_id in dict.fromkeys(job_ids) if job_id]
    if not ids:
        return {}
    if runner is None:
        _answering("squeue")
    run = runner or run_command
    argv = ["squeue", "-h", "-j", ",".join(ids), "-o", SQUEUE_FORMAT]
    try:
        result = run(argv)
    except CommandError as exc:
        # squeue exits 1 with "Invalid job id" when none of the jobs is known any more.
        if "invalid job id" in (exc.stderr + exc.stdout).lower():
            return {}
        raise _unavailable(exc) from exc
    return parse_squeue(result.stdout)


def find_job(job_id: str, runner: Runner | None = None) -> SlurmJob:
    """The job as scontrol knows it, else as sacct recorded it; UnknownJobError if neither."""
    if runner is None:
        try:
            _answering("scontrol")
        except SlurmUnavailableError as exc:
            raise type(exc)(
                f"job {job_id}: {exc}; or pass the run folder, its progress.jsonl or a "
                f"trainer_state.json instead"
            ) from exc
    run = runner or run_command
    errors = []
    try:
        text = run(["scontrol", "-o", "show", "job", job_id]).stdout
        if text.strip():
            return job_from_scontrol(text)
    except CommandError as exc:
        if classify(exc, "") is not None:  # no client, or a dead controller: not "unknown"
            unavailable = _unavailable(exc)
            raise type(unavailable)(
                f"job {job_id}: {unavailable}; or pass the run folder, its progress.jsonl or a "
                f"trainer_state.json instead"
            ) from exc
        errors.append(f"scontrol: {_last_line(exc)}")
    try:
        text = run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", SACCT_FIELDS]).stdout
        found = parse_sacct(text).get(job_id)
        if found is not None:
            return found
        errors.append("sacct: no record")
    except CommandError as exc:
        errors.append(f"sacct: {_last_line(exc)}")
    raise UnknownJobError(
        f"job {job_id}: Slurm does not know it ({'; '.join(errors)}). Pass the run folder "
        f"(`plan-job emit -o FOLDER`), its progress.jsonl, or a trainer_state.json instead"
    )


def with_end_from_env(job: SlurmJob, env: Mapping[str, str] | None = None) -> SlurmJob:
    """Inside the job itself, Slurm's own variable beats squeue's answer."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID") == job.job_id and env.get(END_TIME_ENV, "").strip().isdigit():
        return replace(job, end_time=float(env[END_TIME_ENV]), source=f"${END_TIME_ENV}")
    return job


def _script_of(submit_line: str, workdir: str) -> str | None:
    """The batch script in an sbatch command line, made absolute against the working dir."""
    try:
        words = shlex.split(submit_line)
    except ValueError:
        return None
    if not words or Path(words[0]).name != "sbatch":
        return None
    # The script is the first word that is neither an option nor the value of a short one
    # ("-p gpu"); the script's own arguments follow it. plan-job's scripts end in .sbatch.
    words = words[1:]
    scripts = [w for w in words if w.endswith(".sbatch")] or [
        word
        for previous, word in zip(["", *words], words, strict=False)
        if not word.startswith("-") and not (re.fullmatch(r"-[A-Za-z]", previous))
    ]
    if not scripts:
        return None  # --wrap, or a script from stdin
    path = Path(scripts[0])
    return str(path if path.is_absolute() or not workdir else Path(workdir) / path)


def _answering(command: str) -> None:
    """SlurmUnavailableError at once when ``command`` cannot run or the controller does not
    answer a ping: squeue and scontrol would retry a dead controller for ~MessageTimeout
    seconds per call (eta --watch and the progress bar call them every refresh)."""
    status = client_status((command,))
    what = "run plan-job where the Slurm client works (the login node)"
    if status.kind == "missing":
        raise SlurmUnavailableError(f"no Slurm client here ({status.reason}): {what}")
    if status.kind == "unreachable":
        raise ControllerUnreachableError(
            f"Slurm's controller does not answer (scontrol ping: {status.reason}): {what}"
        )


def _unavailable(exc: CommandError) -> SlurmUnavailableError:
    what = "run plan-job where the Slurm client works (the login node)"
    return classify(exc, what) or SlurmUnavailableError(
        f"{exc.argv[0]} failed ({_last_line(exc)}): {what}"
    )


def _last_line(exc: CommandError) -> str:
    """Slurm's clients explain in their last line; earlier ones are resolver noise."""
    lines = (exc.stderr or exc.stdout).strip().splitlines()
    return lines[-1].strip() if lines else f"exit {exc.returncode}"
