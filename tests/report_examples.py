"""Real inputs for the report pages' tests: a tiny JiT calibrated on this machine, a run of it
in two jobs (the first stopped by its stop time, the second resumed from its checkpoint and
stopped the same way), and a history database of planned runs and their jobs' outcomes."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from planner.history import database as history
from tests.builders import TINY_JIT, add_outcomes, plan_for, recorded_run, spec_with, write_spec
from tests.paths import REPO
from tests.processes import cli_env, no_slurm_env, run_cli

# Global batch 32 of micro-batches of 8: 1, 2 and 4 nodes divide it, 3 does not (a node
# count the plan marks impossible); up to 4 nodes, modelled beyond the calibrated one.
SPEC: dict[str, Any] = {
    **copy.deepcopy(TINY_JIT),
    "name": "report-example",
    "data": {"samples": 64_000},
    "batch": {"micro_batch": 8, "global_batch": 32},
    "checkpoint": {"dir": "ck", "interval_steps": 10},
    "calibration": {
        "executor": "local",
        "device": "cpu",
        "max_steps": 400,
        "max_seconds": 4,
        "min_steps": 20,
        "target_ci": 0.02,
    },
    "plan": {"max_nodes": 4, "allow_unmeasured_scaling": True},
}
JOB_SECONDS = 12.0  # each training job's stop time from its start: a few steps on a busy CPU


def calibrated(folder: Path) -> tuple[Path, Path]:
    """(run.yaml, cal.yaml): SPEC calibrated for real on this machine."""
    spec = write_spec(folder, SPEC)
    cal = folder / "cal.yaml"
    proc = run_cli(["calibrate", str(spec), "-o", str(cal)], folder, no_slurm_env(folder))
    assert proc.returncode == 0, proc.stderr
    return spec, cal


def ran(folder: Path, spec: Path, cal: Path) -> Path:
    """A run folder emitted from the calibration and trained in two jobs, each stopped by
    its stop time: the second resumes from the first's checkpoint."""
    run_dir = folder / "run"
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(cal), "-o", str(run_dir)],
        folder,
        no_slurm_env(folder),
    )
    assert proc.returncode == 0, proc.stderr
    for _ in range(2):
        stop_at = time.time() + JOB_SECONDS
        job = subprocess.run(
            [sys.executable, "-m", "jobs.train", str(run_dir / "train.json"), "--stop-at",
             str(stop_at)],
            cwd=folder,
            env=cli_env({"PYTHONPATH": str(REPO)}),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )  # fmt: skip
        assert job.returncode == 0, job.stderr
    return run_dir


def history_db(folder: Path) -> Path:
    """Three planned runs of two workloads with ended jobs: two inside their P95, one over."""
    db = folder / "history.sqlite"
    fast = recorded_run(db, folder, "run-a")
    slow = recorded_run(db, folder, "run-b")
    add_outcomes(db, fast, [0.95, 1.0])
    add_outcomes(db, slow, [1.3])
    third = folder / "run-c"
    third.mkdir()
    # Another workload, planned with a 5% run-to-run spread: its P95 is above its P50.
    gpt = {"name": "gpt", "preset": "tiny"}
    plan = plan_for(spec_with(workload=gpt, plan__max_nodes=8, plan__run_to_run_spread=0.05))
    history.record_plan(plan, third, path=db)
    add_outcomes(db, str(third.resolve()), [1.02])
    return db
