"""Why a job of a run ended as it did, in one place: what `eta`, `resubmit` and `history` say
about a failed, hung or stopped job.

From what each source tells: Slurm's state and exit (sacct's ExitCode "code:signal", the
signal by name: "0:9" is "killed by SIGKILL"), the job's own lines in the progress file
(planner.runs.job_log: the ``failure``, ``hang``, ``chain_stopped`` and ``checkpoint_bad``
events the training writes, its newest line), and the last lines of its log. The cause is
named where one of them tells it, in that order: the training's own event, then Slurm's
state, then the log's text (a full disk, a CUDA or host out-of-memory, an import error, a
checkpoint that does not fit the workload, a command that ignored the stop signal).

A job that Slurm says ended while the run's trainer lock (``.plan-job-trainer.json`` in
checkpoint.dir) still has a fresh heartbeat is a live orphan (its node's slurmd died, say):
a trainer still runs, and it is said so, never "killed or crashed". Torch-free.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.contract.failure import EXIT_CHAIN_STOPPED, EXIT_HANG, EXIT_REFUSED
from jobs.node.trainer_lock import LOCK_FILE
from planner.clock import clock_text
from planner.runs.inferred_outcome import job_log_text
from planner.runs.job_log import JobLog
from planner.runs.run_folder import job_log_path
from planner.slurm.accounting import SLURM_ENDED, JobOutcome, signal_name
from planner.units import fmt_duration

# The training's failure causes (jobs.contract.failure.CAUSES) in words.
CAUSES = {
    "no_space": "no space left on the device",
    "out_of_memory": "the device (CUDA) ran out of memory",
    "host_out_of_memory": "the node ran out of memory",
    "import_error": "an import failed",
    "checkpoint_mismatch": "a checkpoint does not fit the workload",
    "no_checkpoint_loads": "no checkpoint of the run loads",
    "trainer_running": "another trainer holds the run's lock",
    "command_failed": "the command failed",
    "command_ignored_stop": "the command ignored the stop signal",
    "exception": "the training raised an exception",
}
TAIL_LINES = 15
# What a job's log says, checked in this order: the first that matches names the cause.
_LOG_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("no_space", re.compile(r"No space left on device|ENOSPC|Disk quota exceeded", re.I)),
    (
        "out_of_memory",
        re.compile(
            r"CUDA out of memory|torch\.(?:cuda\.)?OutOfMemoryError"
            r"|plan-job train: (?:rank [^:]*: )?oom:"
        ),
    ),
    (
        "host_out_of_memory",
        re.compile(r"oom[_-]kill|Out of memory: Killed process|\bMemoryError\b", re.I),
    ),
    ("import_error", re.compile(r"\b(?:ModuleNotFoundError|ImportError)\b")),
    (
        "checkpoint_mismatch",
        re.compile(
            r"size mismatch for|Missing key\(s\) in state_dict|Unexpected key\(s\) in state_dict"
        ),
    ),
    ("command_ignored_stop", re.compile(r"did not exit within stop_grace_s")),
)
_FORWARDED = re.compile(r"plan-job: got (\w+) at (\S+), forwarding it to the training")
_SCRIPT_STATUS = re.compile(r"plan-job: segment \S+ exited with status (\d+)")
_KILLED = re.compile(r"\bKilled\b")
# Slurm's states in words, where they are the cause.
_STATES = {
    "NODE_FAIL": "its node failed (NODE_FAIL)",
    "PREEMPTED": "it was preempted",
    "BOOT_FAIL": "its node did not boot (BOOT_FAIL)",
    "DEADLINE": "it passed its deadline",
    "OUT_OF_MEMORY": "it ran out of memory (Slurm's OUT_OF_MEMORY: the node's memory)",
    "TIMEOUT": "it reached its time limit",
    "CANCELLED": "it was cancelled",
}
_OK_STOPS = ("done", "signal", "time_limit")


@dataclass(frozen=True)
class TrainerLock:
    """The run's trainer lock as the training writes it (jobs.node.trainer_lock)."""

    job_id: str | None
    restart: int
    host: str
    pid: int
    heartbeat: float
    stale_after_s: float

    def fresh(self, now: float) -> bool:
        return now - self.heartbeat < self.stale_after_s


def read_trainer_lock(checkpoint_dir: Path | None) -> TrainerLock | None:
    """The lock in ``checkpoint_dir``, if one is there and reads; None otherwise."""
    if checkpoint_dir is None:
        return None
    try:
        raw = json.loads((checkpoint_dir / LOCK_FILE).read_text(encoding="utf-8"))
        return TrainerLock(
            job_id=None if raw.get("job_id") is None else str(raw["job_id"]),
            restart=int(raw.get("restart") or 0),
            host=str(raw.get("host") or "?"),
            pid=int(raw.get("pid") or 0),
            heartbeat=float(raw["heartbeat"]),
            stale_after_s=float(raw["stale_after_s"]),
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


@dataclass(frozen=True)
class Diagnosis:
    """How one job (one attempt of it) ended, and why where that can be told."""

    job_id: str | None
    state: str | None  # Slurm's (or the inferred one), None: not known
    state_source: str | None  # sacct, scontrol, job log, progress log
    exit: str | None  # "exit 1", "killed by SIGKILL"
    cause: str | None  # a name: CAUSES' keys, "hang", "chain_stopped", a Slurm state, "killed"
    why: str  # one line: what happened and why, as far as it is known
    step: int | None  # the step it reached (the progress file's), or where it hung
    last_line: str | None  # its newest progress line, described
    log_path: Path | None
    log_tail: tuple[str, ...]
    notes: tuple[str, ...] = ()  # checkpoints set aside, the chain's cancelled jobs, ...
    orphan: str | None = None  # a trainer of this job still runs: said in words
    failed: bool = False  # it did not do its share (not a clean stop): not learned from
    hung: bool = False
    restarts: int = 0  # Slurm's restart count of this attempt

    @property
    def signature(self) -> tuple[str, int | None]:
        """What makes two failures "the same": the cause (else the state and exit) and step."""
        return (self.cause or f"{self.state} {self.exit or ''}".strip(), self.step)

    def headline(self) -> str:
        """The job, how it ended and why, in one line."""
        parts = [f"job {self.job_id}" if self.job_id else "the job"]
        if self.restarts:
            parts[0] += f" (restart {self.restarts})"
        ended = " ".join(p for p in (self.state, self.exit and f"({self.exit})") if p)
        if ended:
            parts.append(f"ended {ended}")
        return " ".join(parts) + f": {self.why}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "restarts": self.restarts,
            "state": self.state,
            "state_source": self.state_source,
            "exit": self.exit,
            "cause": self.cause,
            "why": self.why,
            "step": self.step,
            "last_line": self.last_line,
            "log_path": str(self.log_path) if self.log_path else None,
            "log_tail": list(self.log_tail),
            "notes": list(self.notes),
            "orphan": self.orphan,
            "failed": self.failed,
            "hung": self.hung,
        }


def diagnose(
    job_id: str | None,
    outcome: JobOutcome | None,
    job: JobLog | None,
    log_text: str | None,
    log_path: Path | None = None,
    lock: TrainerLock | None = None,
    now: float | None = None,
) -> Diagnosis:
    """How ``job_id`` ended, from Slurm's ``outcome``, its progress summary ``job``, its log's
    text and the run's trainer lock."""
    now = time.time() if now is None else now
    state = outcome.state if outcome is not None else None
    exit_ = _exit(outcome, log_text)
    events = job.notable if job is not None else ()
    step = job.last_step if job is not None else None
    notes = [_bad_checkpoint(e) for e in events if e.get("event") == "checkpoint_bad"]
    stop = job.stop_reason if job is not None else None
    orphan = _orphan(job_id, outcome, lock, now)
    cause, why, hung = None, "", False
    chain = _last(events, "chain_stopped")
    hangs = [e for e in events if e.get("event") == "hang"]
    failure = _last(events, "failure")
    never_ran = (
        job is None
        and outcome is not None
        and outcome.state == "CANCELLED"
        and not outcome.elapsed_s
    )
    # Nothing to go on (no line, no Slurm record, no log): not counted as a failure.
    unknown = job is None and not log_text and (outcome is None or outcome.state == "UNKNOWN")
    if never_ran:
        why = "cancelled before it started (a chain's spare segment, or by hand)"
    elif unknown:
        why = "nothing tells how it ended: no progress line, no log, no record in Slurm"
    elif orphan is not None:
        cause, why = "orphan", orphan
    elif chain is not None:
        cause, why = "chain_stopped", _chain_stopped(chain)
        notes += [f"log: {line}" for line in _strings(chain.get("log_tail"))]
    elif hangs:
        cause, why, hung = "hang", _hang(hangs), True
        step = _int(hangs[0].get("step"), step)
    elif failure is not None:
        cause = str(failure.get("cause") or "exception")
        why = _failure(failure)
        step = _int(failure.get("step"), step)
    elif stop not in _OK_STOPS:
        cause, why = _from_slurm_and_log(outcome, exit_, log_text, stop)
    if not why:
        why = _unexplained(outcome, stop)
    # Done its share: a clean stop line, or Slurm's COMPLETED where nothing tells otherwise.
    completed = outcome is not None and outcome.state == "COMPLETED" and cause is None
    failed = not (never_ran or unknown) and orphan is None and not (stop in _OK_STOPS or completed)
    return Diagnosis(
        job_id=job_id,
        state=state,
        state_source=(outcome.source + (", inferred" if outcome.inferred else ""))
        if outcome is not None
        else None,
        exit=exit_,
        cause=cause,
        why=why,
        step=step,
        last_line=_describe(job.last_event) if job is not None and job.last_event else None,
        log_path=log_path,
        log_tail=tuple(_tail(log_text)),
        notes=tuple(notes),
        orphan=orphan,
        failed=failed,
        hung=hung,
        restarts=outcome.restarts if outcome is not None else 0,
    )


def diagnose_job(
    run_dir: Path,
    job_id: str,
    outcome: JobOutcome | None,
    job: JobLog | None,
    checkpoint_dir: Path | None,
    now: float | None = None,
) -> Diagnosis:
    """diagnose() with the job's log (logs/ of the run folder) and the run's trainer lock."""
    return diagnose(
        job_id,
        outcome,
        job,
        job_log_text(run_dir, job_id),
        job_log_path(run_dir, job_id),
        read_trainer_lock(checkpoint_dir),
        now,
    )


def same_failure_twice(diagnoses: Sequence[Diagnosis]) -> tuple[Diagnosis, Diagnosis] | None:
    """The newest two failed attempts when they failed the same way at the same step."""
    failed = [d for d in diagnoses if d.failed]
    if len(failed) < 2:
        return None
    older, newer = failed[-2], failed[-1]
    return (older, newer) if older.signature == newer.signature else None


# -- the causes ---------------------------------------------------------------------------


def _from_slurm_and_log(
    outcome: JobOutcome | None, exit_: str | None, log_text: str | None, stop: str | None
) -> tuple[str | None, str]:
    text = log_text or ""
    for cause, pattern in _LOG_CAUSES:
        match = pattern.search(text)
        if match:
            line = _line_of(text, match.start())
            return cause, f"{CAUSES[cause]}: the log says {line!r}"
    state = outcome.state if outcome is not None else None
    code = outcome.exit_code if outcome is not None else None
    if state == "TIMEOUT" and stop is None:
        forwarded = _FORWARDED.search(text)
        if forwarded:
            return (
                "command_ignored_stop",
                f"{CAUSES['command_ignored_stop']}: it got {forwarded.group(1)} at "
                f"{forwarded.group(2)}, wrote no stop line and was killed at the time limit",
            )
    if code == EXIT_HANG:
        return "hang", f"the training's hang watchdog ended it (exit {EXIT_HANG})"
    if code == EXIT_CHAIN_STOPPED and state == "FAILED":
        return "chain_stopped", "the chain stopped itself: the segments before made no progress"
    if code == EXIT_REFUSED and state == "FAILED":
        return (
            "refused",
            "the training refused to start (exit 2): its train.json, arguments or launch "
            "environment, or the batch script did not parse",
        )
    if state in _STATES and stop is None:
        return state, _STATES[state]
    if exit_ is not None and "killed by" in exit_ and stop is None:
        return "killed", exit_
    return None, ""


def _unexplained(outcome: JobOutcome | None, stop: str | None) -> str:
    if stop is not None:
        return f"the training stopped cleanly ({stop})"
    if outcome is None:
        return "no stop line and nothing else says how it ended"
    if outcome.state == "COMPLETED":
        return "it completed without a stop line"
    return "no stop line, and neither Slurm, the progress file nor the log says why"


def _exit(outcome: JobOutcome | None, log_text: str | None) -> str | None:
    """The exit in words; sacct's "9:0" for a script that exited 137 is a SIGKILL, which the
    script's own last line (or bash's "Killed") tells."""
    if outcome is None:
        return None
    if outcome.state not in SLURM_ENDED and not outcome.signal and log_text:
        statuses = _SCRIPT_STATUS.findall(log_text)
        if statuses and int(statuses[-1]) > 128:
            status = int(statuses[-1])
            return f"killed by {signal_name(status - 128)} (its script exited {status})"
        if outcome.exit_code == 9 and _KILLED.search(log_text):
            return "killed by SIGKILL (the log says Killed)"
    text = outcome.exit_text
    return None if text == "exit 0" else text  # says nothing: the state does


def _orphan(
    job_id: str | None, outcome: JobOutcome | None, lock: TrainerLock | None, now: float
) -> str | None:
    """A live trainer of this job although Slurm says it ended."""
    if lock is None or outcome is None or job_id is None or lock.job_id != job_id:
        return None
    if outcome.state in ("RUNNING", "PENDING", "COMPLETING") or not lock.fresh(now):
        return None
    return (
        f"a trainer is still running on {lock.host} pid {lock.pid} (restart {lock.restart}), "
        f"heartbeat {fmt_duration(max(now - lock.heartbeat, 0.0))} ago, while Slurm says job "
        f"{job_id} ended {outcome.state}: a live orphan, not a crash; it holds the run's lock "
        f"until it exits or its heartbeat is {fmt_duration(lock.stale_after_s)} old"
    )


def _hang(hangs: Sequence[Mapping[str, Any]]) -> str:
    """ "hung in step 1,234 for 5 min 0 s on rank 3" (every rank whose watchdog fired)."""
    first = hangs[0]
    phase = str(first.get("phase") or "step")
    step = _int(first.get("step"), None)
    waited = first.get("waited_s")
    where = {
        "step": f"in step {step + 1:,}" if step is not None else "in a step",
        "save": f"saving the checkpoint of step {step:,}" if step is not None else "saving",
        "eval": f"in the evaluation after step {step:,}" if step is not None else "evaluating",
        "load": "loading the checkpoint",
        "startup": "starting up, before its first step",
        "compile": "compiling the model",
        "progress": (
            f"with no progress line after step {step:,}" if step is not None else "silent"
        ),
    }.get(phase, f"in phase {phase}")
    text = f"hung {where}"
    if isinstance(waited, int | float) and math.isfinite(waited):
        text += f" for {fmt_duration(float(waited))}"
    ranks = sorted({r for e in hangs if (r := _int(e.get("rank"), None)) is not None})
    hosts = sorted({str(e["host"]) for e in hangs if e.get("host")})
    if ranks:
        text += f" on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
    if hosts:
        text += f" ({', '.join(hosts)})"
    timeout = first.get("timeout_s")
    if isinstance(timeout, int | float) and math.isfinite(timeout):
        text += f": its hang timeout ({fmt_duration(float(timeout))}) expired"
    return text + "; the stacks are in the job's log"


def _chain_stopped(event: Mapping[str, Any]) -> str:
    stalled = _int(event.get("stalled"), None)
    reason = str(event.get("reason") or "the segments before made no progress")
    text = f"the chain stopped itself: {reason}"
    if stalled is not None:
        text += f" ({stalled} segment(s) in a row without progress)"
    cancelled = _strings(event.get("cancelled"))
    if cancelled:
        return text + f"; cancelled job(s) {', '.join(cancelled)}"
    return text + "; nothing left to cancel"


def _failure(event: Mapping[str, Any]) -> str:
    cause = str(event.get("cause") or "exception")
    message = str(event.get("message") or "").strip()
    wording = CAUSES.get(cause, cause)
    return f"{wording}: {message}" if message else wording


def _bad_checkpoint(event: Mapping[str, Any]) -> str:
    return (
        f"checkpoint {event.get('path')} set aside as {event.get('moved_to')}: "
        f"{event.get('reason') or 'did not load'}"
    )


def _describe(event: Mapping[str, Any]) -> str:
    """A progress line in words: "step 1,234, 2026-12-03 14:05:06 UTC"."""
    name = str(event.get("event"))
    step = _int(event.get("step"), None)
    if step is None:
        text = name
    else:
        text = f"step {step:,}" if name == "step" else f"{name} at step {step:,}"
    if name == "stop" and event.get("reason"):
        text += f" ({event['reason']})"
    moment = event.get("time")
    if isinstance(moment, int | float) and math.isfinite(moment):
        text += f", {clock_text(float(moment), seconds=True)}"
    return text


def _last(events: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((e for e in reversed(events) if e.get("event") == name), None)


def _tail(text: str | None) -> list[str]:
    return (text or "").rstrip().splitlines()[-TAIL_LINES:] if text else []


def _line_of(text: str, position: int) -> str:
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start : end if end >= 0 else len(text)].strip()
    return line if len(line) <= 200 else line[:197] + "..."


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _int(value: Any, default: int | None) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    return default
