"""planner.runs.diagnosis: how a job ended and why, from recorded sacct output, hand-written
progress lines (the events of issues 20/21's contract) and job logs. The real failing, hung
and stopped jobs are the node side's tests on the cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from planner.runs.diagnosis import (
    CAUSES,
    LOCK_FILE,
    Diagnosis,
    diagnose,
    read_trainer_lock,
    same_failure_twice,
)
from planner.runs.job_log import JobLog
from planner.runs.progress_reader import read_summary
from planner.slurm.accounting import JobOutcome, parse_sacct_attempts, parse_sacct_outcomes
from tests.paths import FIXTURES

T0 = 1_700_000_000.0


def job_log(
    tmp_path: Path, *events: dict[str, Any], steps: int = 20, stop: str | None = None
) -> JobLog:
    """One job's progress summary: a start line, ``steps`` step lines, then ``events``."""
    lines = [{"event": "start", "time": T0, "step": 0, "total_steps": 1000, "job_id": "7"}]
    lines += [
        {"event": "step", "time": T0 + s, "step": s, "step_s": 1.0, "loss": 1.0}
        for s in range(1, steps + 1)
    ]
    lines += [{"time": T0 + steps + 1, **e} for e in events]
    if stop:
        lines.append({"event": "stop", "time": T0 + steps + 2, "step": steps, "reason": stop})
    path = tmp_path / "progress.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (job,) = read_summary(path).jobs
    return job


def outcome(state: str, exit_code: int | None = 0, signal: int | None = None) -> JobOutcome:
    return JobOutcome("7", state, "sacct", False, exit_code, signal=signal)


def test_sacct_attempts_and_signals_from_a_real_cluster() -> None:
    """`sacct -D` of the test cluster: job 1 requeued once (scontrol requeue) then cancelled;
    2: a python killed by SIGKILL under bash (9:0: 137 & 127); 3: the script killed by
    SIGKILL (0:9); 4: exit 3; 5: the srun step killed by SIGKILL; 6: `sys.exit(137)`."""
    attempts = parse_sacct_attempts((FIXTURES / "sacct_attempts.txt").read_text())
    first, second = attempts["1"]
    assert (first.state, first.restarts, second.state, second.restarts) == (
        "REQUEUED",
        0,
        "CANCELLED",
        1,
    )
    assert first.signal == 15  # its batch step's, at the requeue: Slurm's, not a cause
    assert first.exit_text == "exit 0"
    assert attempts["3"][0].exit_text == "killed by SIGKILL"
    assert attempts["5"][0].exit_text == "killed by SIGKILL"  # from its step 5.0
    assert attempts["4"][0].exit_text == "exit 3"
    assert attempts["2"][0].exit_text == "exit 9"  # the log tells it apart (below)
    assert parse_sacct_outcomes((FIXTURES / "sacct_attempts.txt").read_text())["1"] == second


def test_a_script_that_exited_137_was_killed_by_sigkill(tmp_path: Path) -> None:
    log = "srun: error: n1: task 0: Killed\nplan-job: segment 1/1 exited with status 137\n"
    found = diagnose("7", outcome("FAILED", 9), job_log(tmp_path), log)
    assert found.exit == "killed by SIGKILL (its script exited 137)"
    assert found.cause == "killed" and found.failed and found.step == 20


def test_a_hang_reads_as_a_hang(tmp_path: Path) -> None:
    hang = {
        "event": "hang",
        "step": 1233,
        "phase": "step",
        "waited_s": 300.0,
        "timeout_s": 300.0,
        "rank": 3,
        "host": "n2",
        "job_id": "7",
    }
    found = diagnose("7", outcome("FAILED", 124), job_log(tmp_path, hang), "stacks...")
    assert found.why.startswith("hung in step 1,234 for 5 min 00 s on rank 3 (n2)")
    assert found.cause == "hang" and found.hung and found.failed and found.step == 1233
    assert "ended FAILED (exit 124): hung in step 1,234" in found.headline()


def test_the_trainings_failure_event_names_the_cause(tmp_path: Path) -> None:
    failure = {
        "event": "failure",
        "step": 15,
        "cause": "no_space",
        "message": "[Errno 28] No space left on device: '/ckpt/ckpt-000000015.pt.tmp'",
        "detail": {"path": "/ckpt", "free_bytes": 10, "needed_bytes": 2000},
    }
    found = diagnose("7", outcome("FAILED", 1), job_log(tmp_path, failure), None)
    assert found.cause == "no_space" and found.step == 15
    assert found.why == f"{CAUSES['no_space']}: {failure['message']}"


@pytest.mark.parametrize(
    ("log", "cause"),
    [
        ("OSError: [Errno 28] No space left on device: 'ckpt.tmp'", "no_space"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out_of_memory"),
        ("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=7.0", "host_out_of_memory"),
        ("ModuleNotFoundError: No module named 'mymodel'", "import_error"),
        (
            "RuntimeError: Error(s) in loading state_dict: size mismatch for w",
            "checkpoint_mismatch",
        ),
        ('Missing key(s) in state_dict: "head.weight"', "checkpoint_mismatch"),
    ],
)
def test_the_logs_text_names_the_cause(tmp_path: Path, log: str, cause: str) -> None:
    found = diagnose("7", outcome("FAILED", 1), job_log(tmp_path), f"start\n{log}\nend\n")
    assert found.cause == cause and found.failed
    assert log.strip()[:40] in found.why and found.log_tail[-1] == "end"


def test_a_timeout_after_the_stop_signal_without_a_stop_line_ignored_it(tmp_path: Path) -> None:
    log = (
        "plan-job: got USR2 at 14:03:05, forwarding it to the training\n"
        "slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-12-03T14:05:00 DUE TO TIME "
        "LIMIT ***\n"
    )
    found = diagnose("7", outcome("TIMEOUT", 0, 15), job_log(tmp_path), log)
    assert found.cause == "command_ignored_stop"
    assert "got USR2 at 14:03:05" in found.why
    # With its stop line the same TIMEOUT is a clean stop.
    clean = diagnose("7", outcome("TIMEOUT", 0, 15), job_log(tmp_path, stop="signal"), log)
    assert clean.cause is None and not clean.failed


def test_slurms_state_and_signal_by_name(tmp_path: Path) -> None:
    killed = diagnose("7", outcome("FAILED", 0, 9), job_log(tmp_path), "")
    assert killed.exit == "killed by SIGKILL" and killed.cause == "killed"
    node = diagnose("7", outcome("NODE_FAIL", 0), job_log(tmp_path), "")
    assert node.cause == "NODE_FAIL" and "its node failed" in node.why and node.failed


def test_a_fresh_trainer_lock_is_a_live_orphan_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text(
        json.dumps(
            {
                "job_id": "7",
                "restart": 0,
                "host": "n1",
                "pid": 4242,
                "started": T0,
                "heartbeat": T0 + 100,
                "heartbeat_s": 2.0,
                "stale_after_s": 10.0,
            }
        )
    )
    lock = read_trainer_lock(tmp_path)
    job = job_log(tmp_path)
    found = diagnose("7", outcome("NODE_FAIL", 0), job, "", lock=lock, now=T0 + 104)
    assert found.cause == "orphan" and not found.failed
    assert found.why.startswith("a trainer is still running on n1 pid 4242")
    assert "heartbeat 4 s ago, while Slurm says job 7 ended NODE_FAIL" in found.why
    # Once the heartbeat is stale, the job is what Slurm says.
    stale = diagnose("7", outcome("NODE_FAIL", 0), job, "", lock=lock, now=T0 + 111)
    assert stale.cause == "NODE_FAIL" and stale.failed


def test_a_stopped_chain_says_why_and_what_it_cancelled(tmp_path: Path) -> None:
    stopped = {
        "event": "chain_stopped",
        "step": 0,
        "stalled": 2,
        "reason": "2 segments in a row ended without a new checkpoint",
        "cancelled": ["12", "13"],
        "log_tail": ["Traceback (most recent call last):", "ImportError: no module x"],
        "job_id": "7",
    }
    found = diagnose("7", outcome("FAILED", 3), job_log(tmp_path, stopped, steps=0), "")
    assert found.cause == "chain_stopped" and found.failed
    assert found.why == (
        "the chain stopped itself: 2 segments in a row ended without a new checkpoint (2 "
        "segment(s) in a row without progress); cancelled job(s) 12, 13"
    )
    assert "log: ImportError: no module x" in found.notes


def test_the_same_failure_at_the_same_step_twice(tmp_path: Path) -> None:
    def failed(step: int, cause: str) -> Diagnosis:
        event = {"event": "failure", "step": step, "cause": cause, "message": "x"}
        return diagnose("7", outcome("FAILED", 1), job_log(tmp_path, event), "")

    clean = diagnose("7", outcome("COMPLETED", 0), job_log(tmp_path, stop="time_limit"), "")
    assert same_failure_twice([failed(15, "exception"), clean, failed(15, "exception")])
    assert same_failure_twice([failed(15, "exception"), failed(16, "exception")]) is None
    assert same_failure_twice([failed(15, "exception"), failed(15, "no_space")]) is None
    assert same_failure_twice([failed(15, "exception")]) is None


def test_every_contract_cause_has_words() -> None:
    from jobs.contract.failure import CAUSES as CONTRACT

    assert set(CONTRACT) == set(CAUSES)
