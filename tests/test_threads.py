"""torch's CPU threads: chosen from the cores the job has, the same way in the calibration
and in the run (jobs.node.threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.contract.train_config import TrainConfig
from jobs.contract.work import Work
from jobs.node.threads import THREADS_ENV, available_cores, cgroup_cpus, choose_threads
from planner.calibration.record import load_record
from tests.builders import user_workload, write_spec
from tests.paths import REPO
from tests.processes import cli_env, run_cli

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (root / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    return root


@pytest.mark.parametrize(
    ("v2", "v1", "cpus"),
    [
        ("max 100000", None, None),
        ("150000 100000", None, 2),  # 1.5 CPUs: a second thread still gets half a core
        ("50000 100000", None, 1),
        (None, ("-1", "100000"), None),
        (None, ("400000", "100000"), 4),
        ("garbage", None, None),
        (None, None, None),
    ],
)
def test_cgroup_quota(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, cpus: int | None
) -> None:
    assert cgroup_cpus(cgroup(tmp_path, v2, v1)) == cpus


def test_the_smallest_limit_decides(tmp_path: Path) -> None:
    none = cgroup(tmp_path)
    assert available_cores({}, none) == (AFFINITY, "CPU affinity")
    assert available_cores({"SLURM_CPUS_PER_TASK": "1"}, none) == (1, "SLURM_CPUS_PER_TASK")
    assert available_cores({"SLURM_CPUS_PER_TASK": "lots"}, none)[0] == AFFINITY  # ignored
    quota = tmp_path / "q"
    quota.mkdir()
    (quota / "cpu.max").write_text("100000 100000\n")
    assert available_cores({}, quota) == (1, "cgroup CPU quota")


def test_one_core_is_left_for_the_loop_and_a_users_setting_is_kept(tmp_path: Path) -> None:
    none = cgroup(tmp_path)
    assert choose_threads({"SLURM_CPUS_PER_TASK": "8"}, none).threads == min(8, AFFINITY) - 1 or (
        AFFINITY == 1
    )
    one = choose_threads({"SLURM_CPUS_PER_TASK": "1"}, none)
    assert (one.threads, one.cores) == (1, 1)
    given = choose_threads({THREADS_ENV: "3", "SLURM_CPUS_PER_TASK": "1"}, none)
    assert (given.threads, given.why) == (3, f"${THREADS_ENV}=3, as set")


PROBE = """
import json, sys
import torch
from jobs.workloads.base import WorkloadConfig
def build(config):
    from tests.fixtures.user_workloads import linear_regression
    with open(config.overrides["probe"], "a") as out:
        out.write(json.dumps(torch.get_num_threads()) + "\\n")
    return linear_regression(config)
"""


@pytest.mark.slow
def test_the_calibration_and_the_run_use_the_same_threads(tmp_path: Path) -> None:
    # A workload that writes down torch's thread count as it is built: once in the
    # calibration, once in its fresh training entry, once in a run's `python -m jobs.train`.
    (tmp_path / "threads_probe.py").write_text(PROBE)
    probe = tmp_path / "threads.jsonl"
    spec = user_workload("linear_regression")
    spec["workload"] = {"function": "threads_probe:build", "overrides": {"probe": str(probe)}}
    spec["calibration"].update(max_seconds=3)
    env = cli_env({"PYTHONPATH": f"{tmp_path}:{REPO}", "SLURM_CPUS_PER_TASK": "2"})
    env.pop(THREADS_ENV, None)
    proc = run_cli(["calibrate", str(write_spec(tmp_path, spec)), "-o", "cal.yaml"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    expected = max(min(2, AFFINITY) - 1, 1)
    assert f"{expected} torch CPU thread" in proc.stdout  # said in the table
    assert load_record(tmp_path / "cal.yaml").measurement.torch_threads == expected
    seen = [json.loads(line) for line in probe.read_text().splitlines()]
    assert seen and set(seen) == {expected}, seen  # the harness and its fresh jobs.train
    config = TrainConfig(
        work=Work(
            builder_path="threads_probe:build",
            workload_name="custom",
            preset="default",
            overrides={"probe": str(probe)},
            micro_batch=4,
            grad_accum=1,
            precision="fp32",
            device="cpu",
            seed=0,
        ),
        total_steps=3,
        checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_interval_steps=3,
        keep_checkpoints=1,
        progress_path=str(tmp_path / "progress.jsonl"),
    )
    (tmp_path / "train.json").write_text(config.to_json())
    run = subprocess.run(
        [sys.executable, "-m", "jobs.train", str(tmp_path / "train.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(probe.read_text().splitlines()[-1]) == expected
