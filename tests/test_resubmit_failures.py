"""resubmit says how the last job ended and why (planner.runs.diagnosis), refuses to repeat a
failure that happened twice the same way at the same step (--force-retry overrides), refuses
while a trainer of the run still runs after Slurm said its job ended, and after the chain
stopped itself. Progress lines are hand-written per issues 20/21's contract; Slurm's answers
are the test cluster's, recorded (tests/run_folders.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from planner.errors import RefusedError
from planner.followup.report import resubmission_text
from planner.followup.resubmit import prepare
from planner.followup.state import inspect_run
from planner.runs.diagnosis import LOCK_FILE
from tests.in_process import invoke
from tests.processes import no_slurm_env
from tests.progress_logs import STEP_S, T0, Log
from tests.run_folders import FakeSlurm, chain_folder, sacct_line


def failure(step: int, cause: str = "exception", message: str = "boom") -> dict[str, Any]:
    return {"event": "failure", "step": step, "cause": cause, "message": message}


def failing_twice(tmp_path: Path, second_at: int = 950, cause: str = "exception") -> Path:
    """Job 11 failed at step 950; job 12 resumed from 900 and failed at ``second_at``."""
    folder = chain_folder(tmp_path)
    log = Log(folder / "progress.jsonl", total=3907)
    log.job(0, [STEP_S] * 950, job_id="11", save_every=100, save_s=60.0)
    log.events.append({"time": log.t, **failure(950)})
    log.wait(30).job(900, [STEP_S] * (second_at - 900), job_id="12", load_s=5.0)
    log.events.append({"time": log.t, **failure(second_at, cause)})
    log.write()
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "ckpt-000000900.pt").write_bytes(b"weights")
    return folder


def two_failed() -> FakeSlurm:
    lines = [
        sacct_line("11", "FAILED", T0 - 20, 1100, "1:0"),
        sacct_line("12", "FAILED", T0 + 1100, 90, "1:0"),
        *(sacct_line(str(i), "CANCELLED by 0", None, 0) for i in (13, 14, 15)),
    ]
    return FakeSlurm(sacct="\n".join(lines) + "\n")


def test_the_same_failure_at_the_same_step_twice_is_refused(tmp_path: Path) -> None:
    folder = failing_twice(tmp_path)
    slurm = two_failed()
    state = inspect_run(str(folder), slurm)
    with pytest.raises(RefusedError) as refused:
        prepare(state, runner=slurm)
    message = str(refused.value)
    assert "job 11 and job 12 failed the same way at step 950" in message
    assert "the training raised an exception: boom" in message and "--force-retry" in message
    resub = prepare(state, runner=slurm, force_retry=True)
    assert resub.from_step == 900
    table = resubmission_text(resub, width=200)
    assert "job 12 FAILED (exit 1)" in table and "the training raised an exception: boom" in table
    assert "failed before" in table and "job 11 ended FAILED (exit 1)" in table


@pytest.mark.parametrize(("second_at", "cause"), [(960, "exception"), (950, "no_space")])
def test_another_step_or_cause_is_not_a_repeat(tmp_path: Path, second_at: int, cause: str) -> None:
    folder = failing_twice(tmp_path, second_at, cause)
    slurm = two_failed()
    assert prepare(inspect_run(str(folder), slurm), runner=slurm).from_step == 900


def test_the_preview_without_slurm_refuses_too_and_force_retry_goes_on(tmp_path: Path) -> None:
    folder = failing_twice(tmp_path)
    env = no_slurm_env(tmp_path, PLANJOB_HISTORY=str(tmp_path / "h.sqlite"))
    proc = invoke(["resubmit", str(folder), "--dry-run"], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "failed the same way at step 950" in proc.stderr
    proc = invoke(["resubmit", str(folder), "--dry-run", "--force-retry"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "# dry run: would submit" in proc.stdout


def test_a_live_orphan_is_refused(tmp_path: Path) -> None:
    folder = chain_folder(tmp_path)
    log = Log(folder / "progress.jsonl", total=3907)
    log.job(0, [STEP_S] * 950, job_id="11", save_every=100, save_s=60.0).write()
    checkpoints = Path(json.loads((folder / "train.json").read_text())["checkpoint_dir"])
    checkpoints.mkdir(parents=True)
    lock = {"job_id": "11", "restart": 0, "host": "n2", "pid": 77, "started": T0}
    lock |= {"heartbeat": 4e9, "heartbeat_s": 30.0, "stale_after_s": 120.0}  # fresh
    (checkpoints / LOCK_FILE).write_text(json.dumps(lock))
    lines = [sacct_line("11", "NODE_FAIL", T0 - 20, 1100)]
    lines += [sacct_line(str(i), "CANCELLED by 0", None, 0) for i in range(12, 16)]
    slurm = FakeSlurm(sacct="\n".join(lines) + "\n")
    with pytest.raises(RefusedError, match="a trainer is still running on n2 pid 77"):
        prepare(inspect_run(str(folder), slurm), runner=slurm, force_retry=True)


def test_a_chain_that_stopped_itself_is_refused_until_forced(tmp_path: Path) -> None:
    folder = chain_folder(tmp_path)
    log = Log(folder / "progress.jsonl", total=3907)
    log.job(0, [STEP_S] * 950, job_id="11", save_every=100, save_s=60.0, stop="time_limit")
    for job_id in ("12", "13"):
        log.job(900, [], job_id=job_id)
    log.events.append(
        {
            "time": log.t,
            "event": "chain_stopped",
            "step": 900,
            "stalled": 2,
            "reason": "2 segments in a row ended without a checkpoint past step 900",
            "cancelled": ["14", "15"],
            "log_tail": ["RuntimeError: CUDA error: an illegal memory access"],
            "job_id": "13",
        }
    )
    log.write()
    lines = [sacct_line("11", "TIMEOUT", T0 - 20, 1800)]
    lines += [sacct_line("12", "FAILED", T0 + 1800, 10, "1:0")]
    lines += [sacct_line("13", "FAILED", T0 + 1820, 5, "3:0")]
    lines += [sacct_line(str(i), "CANCELLED by 0", None, 0) for i in (14, 15)]
    slurm = FakeSlurm(sacct="\n".join(lines) + "\n")
    state = inspect_run(str(folder), slurm)
    with pytest.raises(RefusedError, match="the chain stopped itself: 2 segments in a row"):
        prepare(state, runner=slurm)
    resub = prepare(state, runner=slurm, force_retry=True)
    table = resubmission_text(resub, width=200)
    assert "cancelled job(s) 14, 15" in table
    assert "log: RuntimeError: CUDA error: an illegal memory access" in table
