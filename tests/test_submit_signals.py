"""SIGTERM during `plan-job submit` (a `kill`, a `timeout`, a closed login shell) cancels the
segments already submitted, as Ctrl-C does: no half chain is left in the queue."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.runs.emit import EmitOptions, emit
from tests.builders import partition, plan_for, record_for, spec_with
from tests.processes import PLAN_JOB, accounted_state, cli_env, squeue
from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm

# sbatch as it is, except that from its second call on it first says so and waits: the
# moment between two segments' submissions, held open for the signal.
SLOW_SBATCH = """#!{python}
import os, sys, time
from pathlib import Path
calls = Path({calls!r})
count = len(calls.read_text().splitlines()) if calls.exists() else 0
with calls.open("a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if count >= 1:
    Path({waiting!r}).touch()
    time.sleep(600)
os.execv({real!r}, ["sbatch", *sys.argv[1:]])
"""


def test_sigterm_between_segments_cancels_the_submitted_ones(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    spec = spec_with(
        cluster={"partition": "gpu", "gpus_per_node": 0, "cpus_per_task": 1},
        plan={"max_nodes": 1},
        batch={"micro_batch": 8, "global_batch": 8},
        checkpoint={"dir": str(tmp_path / "ck")},
    )
    record = record_for(
        spec,
        samples_per_step=8,
        startup_s=5.0,
        import_s=1.0,
        build_s=1.0,
        warmup_extra_s=1.0,
        checkpoint_save_s=1.0,
        checkpoint_load_s=1.0,
    )
    limits = partition(180, gpus_per_node=2, cpus_per_node=2, total_nodes=2)
    plan = plan_for(spec, limits, record)
    assert len(plan.segments) >= 2
    run = emit(plan, EmitOptions(tmp_path / "run", tmp_path, sys.executable)).folder
    real = shutil.which("sbatch")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    waiting = tmp_path / "waiting"
    (bin_dir / "sbatch").write_text(
        SLOW_SBATCH.format(
            python=sys.executable, calls=str(tmp_path / "calls"), waiting=str(waiting), real=real
        )
    )
    (bin_dir / "sbatch").chmod(0o755)
    # A held job for the chain to wait on: its segments stay pending, none runs.
    held = subprocess.run(
        ["sbatch", "--parsable", "--hold", "--time=1", "--wrap", "true"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    env = cli_env({"PATH": f"{bin_dir}:{cli_env()['PATH']}"})
    proc = subprocess.Popen(
        [str(PLAN_JOB), "submit", str(run), "--after", held],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not waiting.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "submit never reached its second segment"
            time.sleep(0.2)
        first = squeue("-n", f"plan-job-{spec.name}", "-o", "%A")
        assert first, "the first segment is not in the queue"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "interrupted by SIGTERM: cancelled the segments already submitted" in err
        assert squeue("-n", f"plan-job-{spec.name}", "-t", "PENDING,RUNNING") == ""
        assert accounted_state(first.split()[0]) == "CANCELLED"
    finally:
        proc.kill()
        subprocess.run(["scancel", held], check=False, timeout=60)
        left = squeue("-n", f"plan-job-{spec.name}", "-o", "%A").split()
        subprocess.run(["scancel", *left], check=False, timeout=60)  # a failure's leftovers
