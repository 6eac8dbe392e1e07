"""A run whose jobs fail at once, on the real test cluster: its checkpoint folder held an
older run's checkpoint of another model, which the first job tried to resume from.

emit warns about that folder, submit refuses it unless told to resume it, and once the jobs
have failed, eta, resubmit, tighten and history --update show their final state (FAILED, the
exit code, the log and its last lines) instead of calling the run "still queued".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from jobs.contract.checkpoint_owner import read_owner
from tests.builders import paced_spec, write_spec
from tests.processes import chain_bound_s, run_cli, time_limits, wait_for_chain
from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm


def test_a_run_that_fails_at_once_shows_its_final_state(
    slurm_cluster: SlurmCluster, paced_calibration: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, paced_spec(40, "failing"))  # 10 steps
    older = tmp_path / "ck" / "ckpt-000000005.pt"
    older.parent.mkdir()
    # What an older run of another model left: it loads, and fits nothing of this one.
    torch.save({"model": {"other.weight": torch.zeros(3)}, "optimizer": {}, "step": 5}, older)

    proc = run_cli(
        ["emit", str(spec), "--calibration", str(paced_calibration), "-o", "run"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: checkpoint.dir" in proc.stderr and "ckpt-000000005.pt" in proc.stderr

    proc = run_cli(["submit", "run"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--resume-foreign" in proc.stderr and "Nothing was submitted" in proc.stderr
    assert not (tmp_path / "run" / "jobs.yaml").exists()

    proc = run_cli(["submit", "run", "--resume-foreign"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_ids = re.findall(r"submitted segment \d+: job (\d+)", proc.stderr)
    owner = read_owner(tmp_path / "ck")
    assert owner is not None and owner.run_dir == str((tmp_path / "run").resolve())
    wait_for_chain(job_ids, timeout_s=chain_bound_s(time_limits(tmp_path / "run")))

    for args in (
        ["eta", "run"],
        ["resubmit", "run", "--dry-run"],
        ["tighten", "run", "--dry-run"],
        ["history", "--update", "run"],
    ):
        proc = run_cli(args, cwd=tmp_path)
        shown = f"{args}: {proc.stdout}\n{proc.stderr}"
        assert proc.returncode == 1, shown
        assert f"segment 1, job {job_ids[0]}: FAILED, exit code 1" in proc.stderr, shown
        assert "(sacct)" in proc.stderr, shown
        assert f"log: {tmp_path / 'run' / 'logs'}/segment-01-{job_ids[0]}.out" in proc.stderr
        # The log's last lines name the cause.
        assert "does not fit the workload" in proc.stderr, shown
        assert "queued" not in proc.stderr, shown
