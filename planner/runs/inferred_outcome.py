"""How a job ended when Slurm no longer says: read from the run's own record.

Past sacct and scontrol's MinJobAge (planner.slurm.accounting), the job's own output file may
hold slurmstepd's "*** JOB n ... CANCELLED AT ... DUE TO TIME LIMIT ***" line or an
out-of-memory report, and the progress file tells whether the training stopped cleanly (a
stop line) or was killed (none). What is read here is marked inferred. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from planner.runs.job_log import JobLog
from planner.runs.run_folder import job_log_path
from planner.slurm.accounting import Accounting, JobOutcome

# slurmstepd's line in the job's output when Slurm ends it; the reason names the state.
_STEPD_RE = re.compile(r"\*\*\* JOB (\d+) ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z ]+))? \*\*\*")
_STEPD_REASONS = {"TIME LIMIT": "TIMEOUT", "PREEMPTION": "PREEMPTED", "NODE FAILURE": "NODE_FAIL"}
# The training's own report of a CUDA OOM (jobs.node.runtime.oom_failure), torch's message, and
# the kernel OOM killer's as slurmstepd relays it.
OOM_RE = re.compile(r"plan-job train: (?:rank [^:]*: )?oom:|CUDA out of memory|oom[_-]kill", re.I)


def infer_outcome(job_id: str, job: JobLog | None, log_text: str | None) -> JobOutcome:
    """The state Slurm no longer tells, read from the job's output and progress lines."""
    if log_text:
        if OOM_RE.search(log_text):
            return JobOutcome(job_id, "OUT_OF_MEMORY", "job log", True, note="out of memory")
        for match in _STEPD_RE.finditer(log_text):
            if match.group(1) == job_id:
                state = _STEPD_REASONS.get((match.group(2) or "").strip(), "CANCELLED")
                return JobOutcome(job_id, state, "job log", True, note=match.group(0))
    if job is None:
        return JobOutcome(job_id, "UNKNOWN", "progress log", True, note="it wrote no progress")
    elapsed = None
    if job.start_time is not None and job.last_time is not None:
        elapsed = job.last_time - job.start_time  # from the start line: start-up not counted
    if job.stop_reason == "done":
        state, note = "COMPLETED", "the training reached total_steps"
    elif job.stop_reason is not None:
        state = "COMPLETED"
        note = f"the training stopped cleanly ({job.stop_reason}) and exits 0"
    else:
        state = "TIMEOUT"
        note = (
            "no stop line: the job was killed; a time limit is the usual cause, a node "
            "failure, preemption or crash reads the same"
        )
    return JobOutcome(job_id, state, "progress log", True, elapsed_s=elapsed, note=note)


def job_log_text(run_dir: Path, job_id: str, limit_bytes: int = 200_000) -> str | None:
    """The tail of the job's output file (planner.runs.run_folder.job_log_path), if any."""
    path = job_log_path(run_dir, job_id)
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(handle.tell() - limit_bytes, 0))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def with_inferred(
    accounting: Accounting,
    job_ids: Iterable[str],
    jobs: Mapping[str, JobLog],
    run_dir: Path,
) -> Accounting:
    """Fill the jobs Slurm no longer knows from their logs and progress lines."""
    outcomes = dict(accounting.outcomes)
    for job_id in job_ids:
        known = outcomes.get(job_id)
        if known is not None and known.state != "UNKNOWN":
            continue
        outcomes[job_id] = infer_outcome(job_id, jobs.get(job_id), job_log_text(run_dir, job_id))
    return Accounting(outcomes, accounting.sacct_error, accounting.attempts)
