"""Fixtures that tests in more than one module use, each named for what it is (the Slurm cluster
fixture and the marker handling are in the repository's root conftest.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from planner.runs.emit import EmitOptions, emit
from planner.runs.run_folder import SubmittedJob
from tests.builders import paced_spec, partition, plan_for, spec_with, write_spec
from tests.processes import run_cli
from tests.progress_logs import STEP_S, Log


@pytest.fixture
def eta_run_dir(tmp_path: Path) -> Path:
    """A real emitted run folder of five 30-minute segments (3907 steps, saves every 100)
    whose first job stopped at step 900 and whose second has reached step 1000."""
    plan = plan_for(
        spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100}), partition(1800)
    )
    folder = emit(plan, EmitOptions(tmp_path / "run", tmp_path)).folder
    log = Log(folder / "progress.jsonl", total=plan.total_steps)
    log.job(0, [STEP_S] * 900, job_id="11", save_every=100, save_s=60.0, stop="signal")
    log.wait(30).job(900, [STEP_S] * 100, job_id="12", load_s=5.0, save_every=100, save_s=60.0)
    log.write()
    jobs = [SubmittedJob(i, f"segment-{i:02d}.sbatch", str(10 + i), None, "") for i in range(1, 6)]
    (folder / "jobs.yaml").write_text(yaml.safe_dump({"jobs": [asdict(job) for job in jobs]}))
    return folder


@pytest.fixture(scope="session")
def paced_calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local calibration of the paced workload (tests/builders.py's paced_spec: 4 samples
    a step, each at least PACE_S), shared by every real-cluster test that runs it. What it
    measures (the step, start-up, a checkpoint's save) does not depend on the run's length,
    name or checkpoint interval, which each test's own spec sets; emit plans that spec with
    this record (the chain test always did so, under another name)."""
    folder = tmp_path_factory.mktemp("paced_calibration")
    spec = write_spec(folder, paced_spec(4000, "paced"))
    proc = run_cli(["calibrate", str(spec), "-o", "cal.yaml"], cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder / "cal.yaml"
