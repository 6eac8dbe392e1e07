"""The chain's progress guard: a segment that finds, at its start, that the segments before it
made no progress several times in a row cancels the rest of its chain instead of failing the
same way again. Standard library (and PyYAML, which plan-job installs, for jobs.yaml).

An afterany chain runs every segment whatever the one before did: a script that crashes at
start, a checkpoint that does not load, a segment too short to reach its first save would
each burn every remaining segment. A segment made progress when the run's newest checkpoint
step advanced while it ran: a `checkpoint` line of a step above every earlier one appears
between its first line in the progress file and the next segment's. A segment that ran (it
has a line there, or a log in the run folder's logs/) and left none counts as stalled, as
one that started from step 0 and failed before its first save does. The segments are the
chain's jobs in jobs.yaml's order (without jobs.yaml: in the order their lines appear); a
requeued job is one segment, and a `chain_stopped` line starts the count afresh, so a
resubmitted chain gets its own tries.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.node.shell import CommandResult, run_command
from jobs.progress import LOG_TAIL_LINES

JOBS_FILE = "jobs.yaml"  # planner.runs.run_folder's name for the chain's job list
LOGS_DIR = "logs"
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Verdict:
    stalled: int  # segments in a row, up to the previous one, that made no progress
    stalled_jobs: tuple[str, ...]  # their job ids, oldest first
    newest_step: int  # the newest checkpoint's step the progress file names (0: none)
    previous_job: str | None  # the job that ran just before this one
    later_jobs: tuple[str, ...]  # the chain's jobs after this one (jobs.yaml)
    last_failure: str  # the previous job's `failure` line, as "cause: message"; '' if none


def chain_jobs(run_dir: Path) -> list[str]:
    """jobs.yaml's job ids, oldest first; [] without a readable one."""
    try:
        import yaml

        raw = yaml.safe_load((run_dir / JOBS_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, ImportError, ValueError):
        return []
    except Exception:  # yaml.YAMLError: a damaged file guards nothing, and must not fail a job
        return []
    jobs = raw.get("jobs") if isinstance(raw, dict) else None
    if not isinstance(jobs, list):
        return []
    return [str(job["job_id"]) for job in jobs if isinstance(job, dict) and job.get("job_id")]


def log_path(run_dir: Path, job_id: str) -> Path | None:
    found = sorted((run_dir / LOGS_DIR).glob(f"*-{job_id}.out"))
    return found[-1] if found else None


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    if path is None:
        return []
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - _TAIL_BYTES, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def assess(events: Sequence[Mapping[str, Any]], run_dir: Path, job_id: str | None) -> Verdict:
    """How many segments before job ``job_id`` made no progress, in a row."""
    first_line: dict[str, int] = {}
    checkpoints: list[tuple[int, int]] = []  # (line, step)
    stopped_at, stopped_by = -1, None
    for index, event in enumerate(events):
        owner = event.get("job_id")
        if isinstance(owner, str) and owner and owner not in first_line:
            first_line[owner] = index
        step = event.get("step")
        kind = event.get("event")
        if kind == "checkpoint" and isinstance(step, int) and not isinstance(step, bool):
            checkpoints.append((index, step))
        elif kind == "chain_stopped":
            stopped_at, stopped_by = index, owner if isinstance(owner, str) else None
    chain = chain_jobs(run_dir)
    later: list[str] = []
    if job_id is not None and job_id in chain:
        position = chain.index(job_id)
        order, later = chain[:position], chain[position + 1 :]
    else:
        order = [j for j in sorted(first_line, key=first_line.__getitem__) if j != job_id]
    ran = [j for j in order if j in first_line or log_path(run_dir, j) is not None]
    previous = ran[-1] if ran else None
    # A chain_stopped line: the segments up to the one that wrote it are another try's.
    if stopped_by is not None and stopped_by in ran:
        ran = ran[ran.index(stopped_by) + 1 :]
    ran = [j for j in ran if first_line.get(j, len(events)) > stopped_at or j not in first_line]
    stalled: list[str] = []
    for position, job in enumerate(ran):
        if job not in first_line:
            stalled.append(job)
            continue
        begin = first_line[job]
        ends = [first_line[j] for j in ran[position + 1 :] if j in first_line]
        end = min(ends, default=len(events))
        before = max((s for i, s in checkpoints if i < begin), default=0)
        advanced = any(begin <= i < end and s > before for i, s in checkpoints)
        stalled = [] if advanced else [*stalled, job]
    newest = max((s for _, s in checkpoints), default=0)
    return Verdict(
        stalled=len(stalled),
        stalled_jobs=tuple(stalled),
        newest_step=newest,
        previous_job=previous,
        later_jobs=tuple(later),
        last_failure=_last_failure(events, previous),
    )


def _last_failure(events: Sequence[Mapping[str, Any]], job_id: str | None) -> str:
    if job_id is None:
        return ""
    for event in reversed(events):
        if event.get("event") == "failure" and event.get("job_id") == job_id:
            return f"{event.get('cause')}: {event.get('message')}"
    return ""


def reason(verdict: Verdict) -> str:
    jobs = ", ".join(verdict.stalled_jobs)
    where = (
        f"the newest checkpoint is still step {verdict.newest_step:,}"
        if verdict.newest_step
        else "no checkpoint was ever saved"
    )
    text = f"the {verdict.stalled} segments before this one (jobs {jobs}) made no progress: {where}"
    if verdict.last_failure:
        text += f"; the last one failed with {verdict.last_failure}"
    return text + "; fix the cause, then `plan-job resubmit` the run"


def cancel(job_ids: Sequence[str]) -> tuple[list[str], CommandResult | None]:
    """scancel the chain's later jobs; the ids cancelled, and the command's result."""
    if not job_ids:
        return [], None
    result = run_command(["scancel", *job_ids])
    return (list(job_ids) if result.ok else []), result
