"""Running the real plan-job command in tests, the way a user runs it."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.contract.measurement import STOP_REASONS
from planner.calibration.record import CalibrationRecord, load_record

REPO = Path(__file__).resolve().parent.parent
PLAN_JOB = Path(sys.executable).parent / "plan-job"

TINY_JIT: dict[str, Any] = {
    "name": "tiny",
    "workload": {"name": "jit", "preset": "tiny"},
    "data": {"samples": 10_000},
    "batch": {"micro_batch": 4, "grad_accum": 2},
    "precision": "fp32",
    "cluster": {"gpus_per_node": 0, "cpus_per_task": 1},
    "checkpoint": {"dir": "ck"},
    "calibration": {
        "executor": "local",
        "device": "cpu",
        "max_steps": 3000,
        "max_seconds": 15,
        "target_ci": 0.03,
    },
}


def user_workload(function: str) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_JIT)
    spec["workload"] = {"function": f"tests.fixtures.user_workloads:{function}"}
    return spec


def write_spec(folder: Path, spec: Mapping[str, Any], name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(dict(spec)))
    return path


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The node imports the test fixtures' user workloads from the repository.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PLAN_JOB), *args],
        cwd=cwd,
        env=dict(env or cli_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def check_sane(record_path: Path, workload: str, executor: str) -> CalibrationRecord:
    """A calibration record whose measurements are inside the bounds a 2-core CPU allows."""
    record = load_record(record_path)
    m, d = record.measurement, record.derived
    assert record.spec.workload.name == workload
    assert m.device_kind == "cpu"
    assert m.stopped_by in STOP_REASONS
    # MSER cuts at most half the series as warm-up; a loaded machine may give few steps.
    assert m.steps_run // 2 <= m.steady_steps <= m.steps_run and m.steady_steps >= 3
    assert m.steps_run == len(m.step_times_s) == m.warmup_steps + m.steady_steps
    assert 1e-4 < m.step_mean_s < 2.0
    assert min(m.step_times_s) <= m.step_median_s <= max(m.step_times_s)
    assert m.step_ci_half_s > 0
    if m.stopped_by == "ci_target":
        assert m.step_ci_relative <= m.target_ci
    assert 0.05 < m.startup_s < 120
    assert m.import_s < m.startup_s
    assert 0 <= m.data_share < 0.5
    assert 10e6 < m.peak_memory_bytes < 16e9
    # AdamW keeps two moments per parameter: a checkpoint is at least 3 x fp32 weights.
    assert m.checkpoint_bytes >= 3 * 4 * m.params
    assert 0 < m.checkpoint_save_s < 30 and 0 < m.checkpoint_load_s < 30
    assert d.samples_per_s == pytest.approx(m.samples_per_step / m.step_mean_s)
    assert d.tokens_per_s == pytest.approx(d.samples_per_s * m.tokens_per_sample)
    assert d.mfu is None  # no peak is known for a CPU unless the spec gives one
    assert m.torch_threads >= 1 and m.threads_why  # chosen for the job's cores, and said
    assert record.job.executor == executor
    assert Path(record.job.stderr).exists()
    return record


PACE_S = 0.2  # seconds each paced step waits: long in wall time, light on the 2 CPUs


def paced_spec(
    samples: int, name: str, checkpoint: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A run of tests.fixtures.user_workloads:paced_linear: 4 samples a step, each >= PACE_S."""
    spec = copy.deepcopy(TINY_JIT)
    spec.update(
        name=name,
        workload={
            "function": "tests.fixtures.user_workloads:paced_linear",
            "overrides": {"pace_s": PACE_S},
        },
        data={"samples": samples},
        batch={"micro_batch": 4, "grad_accum": 1},
        cluster={"partition": "gpu", "gpus_per_node": 0, "cpus_per_task": 1},
        checkpoint=dict(checkpoint or {"dir": "ck"}),
    )
    spec["calibration"].update(max_seconds=6, target_ci=0.02)
    return spec
