"""A user's own train.py (plain PyTorch with jobs.report) on the real cluster, the way a user
runs it: calibrate through Slurm, emit, a job killed at its time limit, resubmit, done; and
the run ends with the numbers of an uninterrupted one."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.progress import read_progress
from planner.calibration.record import load_record
from tests.builders import write_spec
from tests.paths import REPO
from tests.processes import (
    chain_bound_s,
    cli_env,
    killed_at_one_minute,
    run_cli,
    time_limits,
    wait_for_chain,
    wait_for_steps,
)
from tests.slurm_cluster import SlurmCluster

EXAMPLE = REPO / "examples" / "user_train_plain.py"
TOTAL = 600
INTERVAL = 50
PACE_MS = 200  # 600 paced steps: 2 minutes, past a 1-minute limit, light on the CPUs


def user_spec() -> dict[str, object]:
    # The interpreter by path: a job does not see the test's virtualenv on its PATH.
    run = (
        f"{shlex.quote(sys.executable)} {shlex.quote(str(EXAMPLE))} --sleep-ms {PACE_MS} "
        "--total-steps {total_steps} --checkpoint-dir {checkpoint_dir} "
        "--checkpoint-every {checkpoint_interval_steps} --resume-from {resume_from}"
    )
    return {
        "name": "user-plain",
        "command": {"run": run, "stop_grace_s": 10},
        "data": {"samples": 16 * TOTAL},
        "batch": {"micro_batch": 16},
        "precision": "fp32",
        "cluster": {"partition": "gpu", "gpus_per_node": 0, "cpus_per_task": 1},
        "checkpoint": {"dir": "ck", "interval_steps": INTERVAL},
        "calibration": {
            "executor": "slurm",
            "device": "cpu",
            "max_seconds": 8,
            "target_ci": 0.02,
            "time_limit_minutes": 3,
        },
    }


def stray_processes(tmp_path: Path) -> list[str]:
    """This test's runs of the example: their checkpoint folder is in tmp_path."""
    found = subprocess.run(
        ["pgrep", "-af", str(EXAMPLE)], capture_output=True, text=True, check=False
    ).stdout
    return [line for line in found.splitlines() if str(tmp_path) in line and "pgrep" not in line]


def uninterrupted_last_loss(tmp_path: Path) -> float:
    """The same script run straight to the end, unpaced (the pacing changes no number)."""
    progress = tmp_path / "reference.jsonl"
    env = cli_env({"PLANJOB_PROGRESS_PATH": str(progress)})
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--total-steps",
            str(TOTAL),
            "--checkpoint-dir",
            str(tmp_path / "reference-ck"),
            "--checkpoint-every",
            str(INTERVAL),
        ],
        env=env,
        check=True,
        timeout=120,
    )
    steps = [e for e in read_progress(progress) if e["event"] == "step"]
    assert steps[-1]["step"] == TOTAL
    return float(steps[-1]["loss"])


def test_a_user_script_calibrates_times_out_resubmits_and_finishes(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, user_spec())
    proc = run_cli(["calibrate", str(spec), "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = load_record(tmp_path / "cal.yaml")
    m = record.measurement
    # The script's own step: the pace and a small MLP's step on 16 samples.
    assert PACE_MS / 1e3 <= m.step_mean_s < 1.5 * PACE_MS / 1e3, m.step_mean_s
    assert m.steady_steps >= 10 and m.stopped_by in ("ci_target", "time_cap")
    assert 0 < m.checkpoint_save_s < 5 and m.checkpoint_bytes > 0
    assert 0.2 < m.startup_s < 60 and m.peak_memory_bytes > 10e6
    assert record.job.executor == "slurm"
    # Stopped when measured: neither the script nor the calibration job is left.
    assert stray_processes(tmp_path) == []
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == ""

    proc = run_cli(["emit", str(spec), "--calibration", "cal.yaml", "-o", "run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    killed_at_one_minute(run / "segment-01.sbatch")
    proc = run_cli(["submit", str(run)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, *spare = re.findall(r"submitted segment \d: job (\d+)", proc.stderr)
    progress = run / "progress.jsonl"
    wait_for_steps(progress, 40, timeout_s=chain_bound_s(time_limits(run)[:1]))
    if spare:
        subprocess.run(["scancel", *spare], check=True)  # resubmit is what this test is about
    wait_for_chain([first, *spare], timeout_s=chain_bound_s(time_limits(run)[:1]))

    proc = run_cli(["resubmit", str(run)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"job {first} TIMEOUT" in proc.stdout, proc.stdout
    resubmitted = re.findall(r"submitted segment \d+: job (\d+)", proc.stderr)
    assert resubmitted, proc.stderr
    wait_for_chain(resubmitted, timeout_s=chain_bound_s(time_limits(run)))

    events = read_progress(progress)
    logs = "\n".join(p.read_text() for p in sorted((run / "logs").iterdir()))
    stops = [e for e in events if e["event"] == "stop"]
    assert stops[-1]["reason"] == "done" and stops[-1]["step"] == TOTAL, logs
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) >= 2 and starts[-1]["step"] > 0, logs  # the second job resumed
    saves = [e for e in events if e["event"] == "checkpoint"]
    assert all(Path(e["path"]).parent == tmp_path / "ck" for e in saves)
    steps = [e for e in events if e["event"] == "step"]
    assert steps[-1]["loss"] == pytest.approx(uninterrupted_last_loss(tmp_path), rel=1e-6)
    assert stray_processes(tmp_path) == []
