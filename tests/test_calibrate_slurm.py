"""plan-job calibrate --executor slurm on the real test cluster that conftest.py starts."""

from __future__ import annotations

import copy
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builders import TINY_JIT, check_sane, write_spec
from tests.in_process import invoke
from tests.processes import PLAN_JOB, accounted_state, cli_env, run_cli, squeue
from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm


def slurm_spec(**calibration: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_JIT)
    spec["cluster"] = {"partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 1}
    # The test partition's MaxTime is 3 minutes: 15 s of steps fit its signal window.
    spec["calibration"].update(
        {"executor": "slurm", "time_limit_minutes": 3, "max_seconds": 15, **calibration}
    )
    return spec


@pytest.fixture
def full_cluster(slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[str]:
    """Both nodes taken by another job, so a new job pends with reason Resources."""
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-N2",
            "--exclusive",
            "--time=3",
            f"--output={tmp_path}/blocker.out",
            "--wrap",
            "sleep 170",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    blocker = out.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 30
        while squeue("-j", blocker, "-o", "%T") != "RUNNING":
            assert time.monotonic() < deadline, "the blocking job never started"
            time.sleep(0.3)
        yield blocker
    finally:
        subprocess.run(["scancel", blocker], check=False, timeout=30)


def test_tiny_jit_calibrates_on_the_cluster(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    path = write_spec(tmp_path, slurm_spec())
    proc = run_cli(["calibrate", str(path), "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = check_sane(tmp_path / "cal.yaml", "jit", "slurm")
    assert record.job.job_id.isdigit()
    # Queued for part of the job's submit-to-result time, never more (same run's clock).
    assert record.job.queue_wait_s is not None
    assert 0 <= record.job.queue_wait_s < record.job.wall_s
    assert record.measurement.host == slurm_cluster.hostname
    assert f"job {record.job.job_id} RUNNING on n" in proc.stderr
    assert accounted_state(record.job.job_id) == "COMPLETED"


def test_pending_past_the_limit_is_cancelled_with_the_reason(
    full_cluster: str, tmp_path: Path
) -> None:
    path = write_spec(tmp_path, slurm_spec(pending_timeout_s=4))
    proc = run_cli(["calibrate", str(path), "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "still pending after" in proc.stderr
    assert "partition gpu; squeue's reason: Resources. Cancelled it." in proc.stderr
    assert not (tmp_path / "cal.yaml").exists()
    job_id = proc.stderr.split("Error: job ")[1].split()[0]
    assert accounted_state(job_id) == "CANCELLED"


@pytest.mark.parametrize(
    ("signum", "said"),
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "interrupted by SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_and_sigterm_cancel_the_queued_job(
    full_cluster: str, tmp_path: Path, signum: int, said: str
) -> None:
    path = write_spec(tmp_path, slurm_spec(), name="queued.yaml")
    proc = subprocess.Popen(
        [str(PLAN_JOB), "calibrate", str(path)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        queued = ""
        while not queued:
            assert time.monotonic() < deadline, "the calibration job never reached the queue"
            queued = squeue("-n", "plan-job-cal-tiny", "-o", "%A %T")
            time.sleep(0.3)
        job_id, state = queued.split()
        assert state == "PENDING"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"{said}: cancelled job {job_id}" in err
    assert accounted_state(job_id) == "CANCELLED"
    assert squeue("-j", job_id, "-t", "PENDING,RUNNING") == ""


def test_bad_cluster_input_exits_2_before_anything_is_written(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    path = write_spec(tmp_path, slurm_spec())
    proc = invoke(["calibrate", str(path), "--partition", "cpu-typo"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "cluster.partition: got 'cpu-typo'; partitions on this cluster: gpu" in proc.stderr
    proc = invoke(["calibrate", str(path), "--time-limit", "2"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "calibration.time_limit_minutes: got 2; must be at least 3" in proc.stderr
    # Above the partition's MaxTime (3 min): sbatch takes it and the job never starts.
    proc = invoke(["calibrate", str(path), "--time-limit", "4"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert (
        "calibration.time_limit_minutes: got 4; at most 3: partition gpu's MaxTime is 3 min"
        in proc.stderr
    )
    assert not (tmp_path / ".plan-job").exists()


def test_a_reservation_sbatch_refuses_fails_the_calibration_in_sbatch_words(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """cluster.reservation reaches the calibration's sbatch through submitit: one that does
    not exist is refused there, and calibrate says so in one message, without a traceback."""
    spec = slurm_spec()
    spec["cluster"]["reservation"] = "no-such-reservation"
    path = write_spec(tmp_path, spec)
    proc = run_cli(["calibrate", str(path), "-o", "cal.yaml"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "sbatch refused the calibration job:" in proc.stderr
    assert "reservation is invalid" in proc.stderr and "cluster.reservation" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cal.yaml").exists()
