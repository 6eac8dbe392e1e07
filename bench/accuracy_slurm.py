"""What Slurm says about a benchmark chain: when its jobs are gone, and what sacct recorded."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

# States of a job that has ended (sacct prints "CANCELLED by 0" for a cancelled one).
FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "CANCELLED",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
)
SACCT_WAIT_S = 180.0  # slurmdbd may take a while to hold a job's end after squeue drops it


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    state: str
    elapsed_s: float
    timelimit_s: float | None


def wait_for_jobs(job_ids: list[str], timeout_s: float, env: dict[str, str]) -> bool:
    """True once squeue lists none of the jobs; False (and the jobs cancelled) on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = _run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%A %T"], env)
        if not out.strip():
            return True
        if time.monotonic() > deadline:
            _run(["scancel", *job_ids], env)
            return False
        time.sleep(2)


def job_records(job_ids: list[str], env: dict[str, str]) -> list[JobRecord]:
    """sacct's allocation records of the jobs, once all are there with a final state."""
    deadline = time.monotonic() + SACCT_WAIT_S
    argv = ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids)]
    argv += ["-o", "JobID,State,Elapsed,Timelimit"]
    while True:
        records = {}
        for line in _run(argv, env).splitlines():
            parts = line.strip().split("|")
            if len(parts) != 4:
                continue
            job_id, state, elapsed, limit = parts
            records[job_id] = JobRecord(
                job_id, state, parse_duration(elapsed) or 0.0, parse_duration(limit)
            )
        done = [records.get(j) for j in job_ids]
        if all(r is not None and r.state.startswith(FINAL_STATES) for r in done):
            return [r for r in done if r is not None]
        if time.monotonic() > deadline:
            return [r for r in done if r is not None]
        time.sleep(2)


def parse_duration(text: str) -> float | None:
    """Slurm's [D-]HH:MM:SS, MM:SS or MM:SS.mmm; None for UNLIMITED, Partition_Limit, ..."""
    text = text.strip()
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        if not head.isdigit():
            return None
        days = int(head)
    parts = text.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    seconds = 0.0
    for number in numbers:  # the last field is seconds, each one before it 60 times more
        seconds = seconds * 60 + number
    return days * 86400 + seconds


def _run(argv: list[str], env: dict[str, str]) -> str:
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return ""
    return proc.stdout
