"""plan-job resubmit --dry-run on a machine without Slurm (no sbatch, squeue, sacct, scontrol
or sinfo on PATH): a preview from the run folder alone that lists what it could not read."""

from __future__ import annotations

from pathlib import Path

from planner.runs.emit import EmitOptions, emit
from tests.builders import plan_for, spec_with
from tests.in_process import invoke
from tests.processes import no_slurm_env
from tests.progress_logs import STEP_S, Log
from tests.run_folders import stopped_folder


def words(text: str) -> str:
    return " ".join(text.split())


def test_preview_from_the_run_folder_alone(tmp_path: Path) -> None:
    run = stopped_folder(tmp_path)  # job 11 died at step 950; checkpoints 800 and 900
    db = tmp_path / "h.sqlite"
    env = no_slurm_env(tmp_path, PLANJOB_HISTORY=str(db))
    proc = invoke(["resubmit", str(run), "--dry-run"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = words(proc.stdout)
    # What it read from the folder: the progress file, the checkpoints, plan.yaml.
    assert "job 11 TIMEOUT, from progress log (inferred)" in out
    assert "step 950 reached of 3,907; checkpoint 900: 50 steps to redo" in out
    assert "measured in the run (200 steady steps)" in out
    assert "partition gpu, MaxTime 30 min 00 s (from plan.yaml, not read now)" in out
    # What it could not, each named.
    assert (
        "not read whether a job of the run is still queued or running, and the running job's "
        "end (no Slurm client here (squeue is not on PATH)); the preview takes every job as ended"
    ) in out
    assert "the jobs' final states, exit codes and elapsed times (sacct, scontrol): inferred" in out
    assert (
        "the partition's MaxTime now (no Slurm client here (scontrol: command not found)): "
        "plan.yaml's from when the run"
    ) in out
    # The preview itself: the scripts and the sbatch commands, nothing written or submitted.
    assert "# ===== segment-06.sbatch (not written) =====" in proc.stdout
    assert "# dry run: would submit" in proc.stdout
    assert f"sbatch --parsable {run / 'segment-06.sbatch'}" in proc.stdout
    assert "resubmit on the login node, where those are checked" in out
    assert not (run / "segment-06.sbatch").exists() and not list(run.glob("resubmit-*.yaml"))
    assert not db.exists()  # jobs taken as ended without Slurm's word are not recorded


def test_without_dry_run_it_still_needs_slurm_and_says_how_to_preview(tmp_path: Path) -> None:
    run = stopped_folder(tmp_path)
    proc = invoke(["resubmit", str(run)], cwd=tmp_path, env=no_slurm_env(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"`plan-job resubmit {run} --dry-run` previews from the run folder alone" in words(
        proc.stderr
    )


def test_a_folder_planned_without_slurm_has_no_max_time_to_fall_back_on(tmp_path: Path) -> None:
    plan = plan_for(spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100}))
    assert plan.partition is None
    run = emit(plan, EmitOptions(tmp_path / "run", tmp_path, "/opt/venv/bin/python")).folder
    Log(run / "progress.jsonl", total=plan.total_steps).job(
        0, [STEP_S] * 250, job_id="7", save_every=100, save_s=60.0
    ).write()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000000200.pt").write_bytes(b"weights")
    proc = invoke(["resubmit", str(run), "--dry-run"], cwd=tmp_path, env=no_slurm_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = words(proc.stdout)
    assert "MaxTime unknown (not read)" in out
    assert (
        "plan.yaml has none either (emitted without Slurm): the preview puts the rest in one job"
        in out
    )
    assert "in 1 job(s)" in out and "segment-02.sbatch" in out
