"""eta on a run whose newest job ended without a stop line: it says how and why (the
diagnosis), a hang as a hang, a stopped chain as such, and a live orphan as a trainer still
running, never "killed or crashed". Progress lines are hand-written per issues 20/21's
contract; Slurm's answers are recorded outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from planner.errors import CommandError
from planner.eta import estimate as estimator
from planner.eta import report as eta_report
from planner.eta.source import load_source
from planner.runs.diagnosis import LOCK_FILE
from planner.runs.emit import EmitOptions, emit
from planner.shell import CommandResult
from tests.builders import partition, plan_for, spec_with
from tests.progress_logs import Log, fake_runner, wobble


def run_folder(tmp_path: Path, *ending: dict[str, Any]) -> tuple[Path, Log]:
    """An emitted run whose job 11 ran 130 steps (saves every 100), then ``ending``."""
    plan = plan_for(
        spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100}), partition(1800)
    )
    folder = emit(plan, EmitOptions(tmp_path / "run", tmp_path)).folder
    log = Log(folder / "progress.jsonl", total=plan.total_steps)
    log.job(0, wobble(130, 1.0), job_id="11", save_every=100, save_s=1.0)
    for event in ending:
        log.events.append({"time": log.t, **event})
    log.write()
    return folder, log


def slurm(sacct: str) -> Any:
    """squeue knows no job of the run, sacct answers ``sacct``, scontrol forgot them all."""
    answers = fake_runner({"squeue": "", "sacct": sacct})

    def run(argv: Sequence[str]) -> CommandResult:
        if argv[0] == "scontrol":
            raise CommandError(list(argv), 1, "", "slurm_load_jobs error: Invalid job id")
        result: CommandResult = answers(argv)
        return result

    return run


def sacct(line: str) -> Any:
    """sacct's line for job 11: ``line`` is its State|ExitCode."""
    return slurm(f"11|{line}|2026-12-03T10:00:00|2026-12-03T10:03:00|180|00:30:00|1\n")


def test_a_sigkilled_job_says_so_with_its_log(tmp_path: Path) -> None:
    folder, log = run_folder(tmp_path)
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "logs" / "segment-01-11.out").write_text(
        "plan-job: segment 1/5, job 11 on n1\nstep 130\nsrun: error: n1: task 0: Killed\n"
    )
    source = load_source(str(folder))
    eta = estimator.estimate(
        source, estimator.observe_slurm(source, sacct("FAILED|0:9")), log.t + 60
    )
    notes = "\n".join(eta.notes)
    assert "killed or crashed" not in notes
    assert "job 11 ended FAILED (killed by SIGKILL): killed by SIGKILL" in notes
    assert "the run resumes from its newest checkpoint, step 100" in notes
    assert "its last progress line: step 130" in notes
    assert "srun: error: n1: task 0: Killed" in notes
    assert eta.diagnosis is not None and eta.diagnosis["exit"] == "killed by SIGKILL"


def test_a_hang_reads_as_a_hang_even_without_slurm(tmp_path: Path) -> None:
    hang = {
        "event": "hang",
        "step": 130,
        "phase": "step",
        "waited_s": 300.0,
        "timeout_s": 300.0,
        "rank": 3,
        "host": "n2",
        "job_id": "11",
    }
    folder, log = run_folder(tmp_path, hang)
    source = load_source(str(folder))
    eta = estimator.estimate(source, None, log.t + 60)  # no Slurm here
    assert eta.status == "stopped"  # not "running": the training wrote its last line
    notes = "\n".join(eta.notes)
    assert "job 11: hung in step 131 for 5 min 00 s on rank 3 (n2)" in notes
    assert eta.remaining is not None and eta.remaining.from_step == 100
    assert "hung in step 131" in eta_report.eta_table(eta, width=200)


def test_a_stopped_chain_says_why_and_which_jobs_it_cancelled(tmp_path: Path) -> None:
    stopped = {
        "event": "chain_stopped",
        "step": 100,
        "stalled": 2,
        "reason": "2 segments in a row made no progress past step 100",
        "cancelled": ["13", "14", "15"],
        "log_tail": ["ModuleNotFoundError: No module named 'x'"],
        "job_id": "12",
    }
    folder, log = run_folder(tmp_path)
    log.job(100, [], job_id="12")
    log.events.append({"time": log.t, **stopped})
    log.write()
    source = load_source(str(folder))
    eta = estimator.estimate(source, estimator.observe_slurm(source, slurm("")), log.t + 5)
    notes = "\n".join(eta.notes)
    assert "the chain stopped itself: 2 segments in a row made no progress past step 100" in notes
    assert "cancelled job(s) 13, 14, 15" in notes
    assert "log: ModuleNotFoundError: No module named 'x'" in notes
    assert eta.status == "stopped" and eta.watch_over


def test_a_live_orphan_is_a_running_trainer_not_a_crash(tmp_path: Path) -> None:
    folder, log = run_folder(tmp_path)
    checkpoints = Path(json.loads((folder / "train.json").read_text())["checkpoint_dir"])
    checkpoints.mkdir(parents=True, exist_ok=True)
    lock = {
        "job_id": "11",
        "restart": 0,
        "host": "n1",
        "pid": 4242,
        "started": log.t - 200,
        "heartbeat": log.t - 3,
        "heartbeat_s": 2.0,
        "stale_after_s": 10.0,
    }
    (checkpoints / LOCK_FILE).write_text(json.dumps(lock))
    source = load_source(str(folder))
    slurm = estimator.observe_slurm(source, sacct("NODE_FAIL|0:0"))
    eta = estimator.estimate(source, slurm, log.t)
    notes = "\n".join(eta.notes)
    assert "killed or crashed" not in notes and "resumes from" not in notes
    assert "a trainer is still running on n1 pid 4242 (restart 0), heartbeat 3 s ago" in notes
    assert "while Slurm says job 11 ended NODE_FAIL" in notes
    assert eta.status == "running" and eta.remaining is not None
    assert eta.remaining.from_step == 130  # where the orphan's lines are
    # Its heartbeat gone stale: the job is what Slurm says.
    eta = estimator.estimate(source, slurm, log.t + 30)
    assert "ended NODE_FAIL: its node failed" in "\n".join(eta.notes)


def test_jobs_that_ended_before_any_progress_line_say_why(tmp_path: Path) -> None:
    """No progress line at all: the first job's log names the cause (an import error)."""
    from planner.errors import RunFailedError
    from tests.progress_logs import T0
    from tests.run_folders import FakeSlurm, chain_folder, sacct_line

    folder = chain_folder(tmp_path)
    (folder / "logs" / "segment-01-11.out").write_text(
        "Traceback (most recent call last):\nModuleNotFoundError: No module named 'mymodel'\n"
    )
    lines = [sacct_line("11", "FAILED", T0, 3, "1:0"), sacct_line("12", "FAILED", T0, 0, "0:9")]
    lines += [sacct_line(str(i), "CANCELLED by 0", None, 0) for i in (13, 14, 15)]
    slurm = FakeSlurm(sacct="\n".join(lines) + "\n")
    try:
        load_source(str(folder), runner=slurm)
    except RunFailedError as exc:
        message = str(exc)
    else:
        raise AssertionError("no error")
    assert "segment 1, job 11: FAILED, exit code 1" in message
    assert "segment 2, job 12: FAILED, killed by SIGKILL" in message
    assert (
        "job 11: an import failed: the log says \"ModuleNotFoundError: No module named 'mymodel'\""
        in message
    )
