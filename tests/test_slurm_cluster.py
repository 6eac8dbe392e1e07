"""Sanity checks of the real Slurm test cluster (conftest.py starts it)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import submitit

from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm


def slurm(*args: str, timeout: float = 30.0) -> str:
    # The fixture has pointed os.environ (SLURM_CONF) at the test cluster.
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed ({result.returncode}): {result.stderr}"
    return result.stdout


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def sbatch(folder: Path, *args: str) -> str:
    # --chdir and --output keep job files out of the repository.
    out = slurm("sbatch", "--parsable", f"--chdir={folder}", f"--output={folder}/%j.out", *args)
    return out.strip().split(";")[0]


def test_sinfo_shows_two_idle_gpu_nodes(slurm_cluster: SlurmCluster) -> None:
    def node_lines() -> list[str]:
        return slurm("sinfo", "-h", "-N", "-p", "gpu", "-o", "%N %t %G %l %c").splitlines()

    # Other tests' jobs may still be finishing on the nodes.
    wait_until(lambda: all(" idle " in line for line in node_lines()), "idle nodes")
    assert sorted(node_lines()) == [f"{node} idle gpu:2 3:00 2" for node in slurm_cluster.nodes]
    assert slurm_cluster.nodes == ["n1", "n2"]
    assert slurm_cluster.partition == "gpu"


def test_srun_spans_both_nodes(slurm_cluster: SlurmCluster) -> None:
    out = slurm("srun", "-N2", "--ntasks-per-node=1", "--time=1", "printenv", "SLURMD_NODENAME")
    assert sorted(out.split()) == slurm_cluster.nodes


def test_sbatch_with_two_gpus_runs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = sbatch(
        tmp_path, "--wait", "--time=1", "--gres=gpu:2", "--wrap", "echo $CUDA_VISIBLE_DEVICES"
    )
    assert (tmp_path / f"{job}.out").read_text().strip() == "0,1"


def test_time_above_max_time_stays_pending(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    minutes = slurm_cluster.max_time_minutes + 1
    job = sbatch(tmp_path, f"--time={minutes}", "--wrap", "true")
    try:

        def state() -> str:
            return slurm("squeue", "-h", "-j", job, "-o", "%T %r").strip()

        # The reason is set on the first scheduling pass, a moment after submission.
        wait_until(lambda: state() == "PENDING PartitionTimeLimit", "PartitionTimeLimit")
    finally:
        slurm("scancel", job)


def test_sacct_reports_completed(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = sbatch(tmp_path, "--wait", "--time=1", "--wrap", "sleep 1")

    def accounted() -> list[str]:
        return slurm("sacct", "-X", "-n", "-P", "-j", job, "-o", "State,Elapsed").split()

    # slurmctld hands job records to slurmdbd asynchronously (a few seconds).
    wait_until(lambda: bool(accounted()) and accounted()[0].startswith("COMPLETED"), "sacct")
    state, elapsed = accounted()[0].split("|")
    assert state == "COMPLETED"
    assert elapsed.startswith("00:00:0")


def test_submitit_job_returns_result(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=1)
    command = submitit.helpers.CommandFunction(["printenv", "SLURM_JOB_PARTITION"])
    job = executor.submit(command)
    wait_until(job.done, "the submitit job", timeout=90)
    assert job.result().strip() == slurm_cluster.partition
