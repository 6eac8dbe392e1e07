"""The history on the real test cluster: a job that Slurm requeues is two attempts, each its
own row with its restart count and its own submit, eligible and start times as sacct has
them, not one row that the second overwrites."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from jobs.progress import read_progress
from planner.history import database as history
from planner.slurm.queue import parse_slurm_time
from tests.builders import paced_spec, write_spec
from tests.processes import run_cli, wait_for_chain, wait_for_steps
from tests.slurm_cluster import SlurmCluster

TOTAL = 120  # paced steps of 0.2 s: half a minute of work
INTERVAL = 20


@pytest.mark.slurm
def test_a_requeued_job_is_one_history_row_per_attempt(
    slurm_cluster: SlurmCluster, paced_calibration: Path, tmp_path: Path
) -> None:
    spec = paced_spec(4 * TOTAL, "requeued", {"dir": "ck", "interval_steps": INTERVAL})
    path = write_spec(tmp_path, spec)
    proc = run_cli(
        ["emit", str(path), "--calibration", str(paced_calibration), "-o", "run"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    proc = run_cli(["submit", str(run)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = re.findall(r"submitted segment \d+: job (\d+)", proc.stderr)
    first = jobs[0]
    progress = run / "progress.jsonl"
    wait_for_steps(progress, 30, timeout_s=120)
    # What a node failure or a preemption does to the job: Slurm stops it and queues it
    # again under the same id (SLURM_RESTART_COUNT 1); released at once, not in 2 minutes.
    subprocess.run(["scontrol", "requeue", first], check=True, timeout=30)
    subprocess.run(["scontrol", "update", f"JobId={first}", "StartTime=now"], timeout=30)
    wait_for_chain(jobs, timeout_s=240)
    starts = [e for e in read_progress(progress) if e["event"] == "start"]
    assert [e["job_id"] for e in starts[:2]] == [first, first], starts

    proc = run_cli(["history", "--update", str(run), "--json"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with history.connect() as db:
        rows = db.execute(
            "SELECT attempt, state, from_step, steps, learned, submit_time, eligible_time,"
            " start_time FROM outcomes WHERE job_id = ?"
            " ORDER BY attempt",
            (first,),
        ).fetchall()
    assert [(r["attempt"], r["state"]) for r in rows] == [(0, "REQUEUED"), (1, "COMPLETED")]
    # Each attempt's submit, eligible and start times are sacct's own (issue 23: the queue
    # wait is Eligible to Start); the requeued run was submitted and made eligible again.
    sacct = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-P", "-j", first, "-o", "Submit,Eligible,Start"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    told = [tuple(parse_slurm_time(t) for t in line.split("|")) for line in sacct.split()]
    assert [(r["submit_time"], r["eligible_time"], r["start_time"]) for r in rows] == told
    assert all(None not in times for times in told) and told[1][1] >= told[0][2]
    again, done = rows
    # The first run stopped on Slurm's SIGTERM with a checkpoint; the second resumed there.
    assert again["steps"] > 0 and done["from_step"] == again["from_step"] + again["steps"]
    assert done["from_step"] + done["steps"] == TOTAL
    runs = json.loads(proc.stdout)["runs"]
    assert [r["reached"] for r in runs] == [TOTAL]
