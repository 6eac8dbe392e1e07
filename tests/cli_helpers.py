"""Running the real plan-job command in tests, the way a user runs it."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

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
