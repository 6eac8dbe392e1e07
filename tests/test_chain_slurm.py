"""calibrate -> plan -> emit -> submit on the real test cluster, to the last step.

The chain test is the one long test of the suite (~4 minutes): the test partition's MaxTime
is 3 minutes, and a run only needs two segments when it is longer than that.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.contract.train_config import TrainConfig
from jobs.progress import read_progress
from tests.builders import HOSTILE, write_spec
from tests.builders import paced_spec as shared_paced_spec
from tests.in_process import invoke
from tests.processes import chain_bound_s, run_cli, time_limits, wait_for_chain
from tests.slurm_cluster import NODE_FEATURE, SlurmCluster
from tests.training_runs import final_weights, reference_weights

pytestmark = pytest.mark.slurm


def paced_spec(samples: int) -> dict[str, Any]:
    return shared_paced_spec(samples, "chain")


def test_a_run_longer_than_max_time_chains_to_the_last_step(
    slurm_cluster: SlurmCluster, paced_calibration: Path, tmp_path: Path
) -> None:
    # Paths a user might have, and some no user should: quoting must keep them inert.
    workdir = tmp_path / HOSTILE
    workdir.mkdir()
    # 950 steps of at least 0.2 s: 190 s, more than a 3-minute job can hold even when its
    # signal comes late, so a second segment is needed whatever the machine's speed; a
    # machine under load calibrates a slower step and plans more.
    spec = write_spec(workdir, {**paced_spec(3800), "name": HOSTILE})
    run_dir = workdir / "runs" / HOSTILE
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(paced_calibration), "-o", str(run_dir)],
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    limits = time_limits(run_dir)
    assert len(limits) >= 2 and all(limit <= "00:03:00" for limit in limits), limits
    assert f"{len(limits)} jobs chained with afterany" in " ".join(proc.stdout.split())

    proc = run_cli(["submit", str(run_dir)], cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    job_ids = re.findall(r"submitted segment \d+: job (\d+)", proc.stderr)
    assert len(job_ids) == len(limits)
    wait_for_chain(job_ids, timeout_s=chain_bound_s(limits))

    config = TrainConfig.from_json((run_dir / "train.json").read_text())
    events = read_progress(Path(config.progress_path))
    starts = [e for e in events if e["event"] == "start"]
    stops = [e for e in events if e["event"] == "stop"]
    logs = "\n".join(p.read_text() for p in sorted((run_dir / "logs").iterdir()))
    # Every job that found steps to do started, in order (one planned for a slower machine
    # than the run found may find the run done).
    assert len(starts) >= 2 and [s["job_id"] for s in starts] == job_ids[: len(starts)], logs
    assert [s["restart"] for s in starts] == list(range(len(starts)))
    assert stops[0]["reason"] in ("signal", "time_limit") and 0 < stops[0]["step"] < 950, logs
    assert stops[-1] == {**stops[-1], "reason": "done", "step": 950}
    assert any(e["event"] == "resume" and e["step"] == stops[0]["step"] for e in events)
    assert not list(tmp_path.rglob("pwned*"))

    chained = final_weights(Path(config.checkpoint_dir), 950)
    reference = reference_weights(run_dir / "train.json", tmp_path)
    assert chained.keys() == reference.keys()
    assert all(torch.equal(chained[name], reference[name]) for name in chained)


def test_every_script_passes_sbatch_test_only(
    slurm_cluster: SlurmCluster, paced_calibration: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, paced_spec(16_000))  # 4000 steps: several segments
    proc = run_cli(
        ["emit", str(spec), "--calibration", str(paced_calibration), "-o", "run"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    scripts = sorted((tmp_path / "run").glob("segment-*.sbatch"))
    assert len(scripts) >= 3
    assert all(limit <= "00:03:00" for limit in time_limits(tmp_path / "run"))
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        test = subprocess.run(
            ["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=30
        )
        assert test.returncode == 0, test.stderr
        assert "to start at" in test.stderr


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        (f"cluster.constraint={NODE_FEATURE}", None),
        ("cluster.constraint=nosuchfeature", "Invalid feature specification"),
        ("cluster.reservation=no-such-reservation", "reservation is invalid"),
    ],
)
def test_sbatch_judges_the_constraint_and_reservation_emit_wrote(
    slurm_cluster: SlurmCluster,
    paced_calibration: Path,
    tmp_path: Path,
    setting: str,
    refusal: str | None,
) -> None:
    """cluster.constraint and cluster.reservation reach sbatch: a feature the nodes have is
    accepted; one they lack, or a reservation that does not exist, is refused by sbatch, and
    `plan-job submit` says so with sbatch's words."""
    spec = write_spec(tmp_path, paced_spec(400))
    emit = ["emit", str(spec), "--calibration", str(paced_calibration), "-o", "run"]
    emit += ["--set", setting]
    proc = run_cli(emit, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "run" / "segment-01.sbatch"
    key, value = setting.removeprefix("cluster.").split("=")
    assert f"#SBATCH --{key}={value}\n" in script.read_text()
    if refusal is None:
        test = subprocess.run(
            ["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=30
        )
        assert test.returncode == 0 and "to start at" in test.stderr, test.stderr
        return
    proc = run_cli(["submit", "run"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "sbatch refused" in proc.stderr, proc.stderr
    assert refusal in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--deadline", "0.01"], "plan.deadline_hours: got 0.01; not met"),
        (["--nodes", "3"], "--nodes: got 3; must be between 1 and 2: partition gpu has 2 node(s)"),
        (
            ["--set", "cluster.gpus_per_node=2", "--set", "batch.global_batch=6"],
            "batch.global_batch: got 6; must be a multiple of micro_batch x GPUs",
        ),
        (["--set", "batch.micro_batch=8"], "micro_batch"),
    ],
)
def test_plans_that_cannot_be_met_exit_2(
    slurm_cluster: SlurmCluster,
    paced_calibration: Path,
    tmp_path: Path,
    args: list[str],
    expected: str,
) -> None:
    spec = write_spec(tmp_path, paced_spec(16_000))
    proc = invoke(["plan", str(spec), "--calibration", str(paced_calibration), *args], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
