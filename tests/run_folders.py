"""Run folders and Slurm answers for the resubmit, tighten and history tests: the reference
chain of tests/test_planning.py emitted for real, with progress written line by line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import yaml

from planner.errors import CommandError
from planner.runs.emit import EmitOptions, emit
from planner.runs.run_folder import SubmittedJob
from planner.shell import CommandResult
from tests.builders import partition, plan_for, spec_with
from tests.paths import FIXTURES
from tests.progress_logs import STEP_S, T0, Log, slurm_time

INVALID_JOB = "slurm_load_jobs error: Invalid job id specified"


class FakeSlurm:
    """Answers Slurm's clients as the test cluster did; every call is kept."""

    def __init__(
        self,
        squeue: str = "",
        sacct: str | None = "",
        jobs: dict[str, str] | None = None,
        max_time: str = "00:30:00",
    ) -> None:
        self.squeue, self.sacct, self.jobs, self.max_time = squeue, sacct, jobs or {}, max_time
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "squeue":
            return self._ok(argv, self.squeue)
        if argv[0] == "sacct":
            if self.sacct is None:
                raise CommandError(argv, 1, "", "sacct: error: accounting storage is disabled")
            return self._ok(argv, self.sacct)
        if argv[:4] == ["scontrol", "-o", "show", "partition"]:
            text = (FIXTURES / "scontrol_partition_gpu.txt").read_text()
            return self._ok(argv, text.replace("MaxTime=00:03:00", f"MaxTime={self.max_time}"))
        if argv[:4] == ["scontrol", "-o", "show", "job"]:
            if argv[4] not in self.jobs:
                raise CommandError(argv, 1, "", INVALID_JOB)
            return self._ok(argv, self.jobs[argv[4]])
        if argv[0] == "sinfo":
            return self._ok(argv, (FIXTURES / "sinfo_gpu.txt").read_text())
        raise AssertionError(f"unexpected command {argv}")

    @staticmethod
    def _ok(argv: list[str], out: str) -> CommandResult:
        return CommandResult(tuple(argv), 0, out, "")


def sacct_line(
    job_id: str, state: str, start: float | None, elapsed: int, code: str = "0:0"
) -> str:
    begin = slurm_time(start) if start is not None else "None"
    end = slurm_time((start or T0) + elapsed)
    return f"{job_id}|{state}|{code}|{begin}|{end}|{elapsed}|00:30:00|1"


def chain_folder(tmp_path: Path) -> Path:
    """The reference chain of five 30-minute segments: 3907 steps of 1.06 s, a 60 s save
    every 100 (tests/test_eta.py's run folder), submitted as jobs 11 to 15."""
    plan = plan_for(
        spec_with(plan__max_nodes=1, checkpoint={"interval_steps": 100}), partition(1800)
    )
    folder = emit(plan, EmitOptions(tmp_path / "run", tmp_path, "/opt/venv/bin/python")).folder
    jobs = [SubmittedJob(i, f"segment-{i:02d}.sbatch", str(10 + i), None, "") for i in range(1, 6)]
    (folder / "jobs.yaml").write_text(yaml.safe_dump({"jobs": [asdict(job) for job in jobs]}))
    return folder


def stopped_folder(tmp_path: Path) -> Path:
    """The chain whose first job died at step 950, the others cancelled before they started."""
    folder = chain_folder(tmp_path)
    log = Log(folder / "progress.jsonl", total=3907)
    log.job(0, [STEP_S] * 950, job_id="11", save_every=100, save_s=60.0)
    log.write()
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for step in (800, 900):
        (checkpoints / f"ckpt-{step:09d}.pt").write_bytes(b"weights")
    return folder


def running_folder(tmp_path: Path) -> Path:
    """The chain whose job 11 stopped at step 900 and whose job 12 runs, at step 1000."""
    folder = chain_folder(tmp_path)
    log = Log(folder / "progress.jsonl", total=3907)
    log.job(0, [STEP_S] * 900, job_id="11", save_every=100, save_s=60.0, stop="signal")
    log.wait(30).job(900, [STEP_S] * 100, job_id="12", load_s=5.0, save_every=100, save_s=60.0)
    log.write()
    return folder


def accounted(last_state: str = "NODE_FAIL", code: str = "0:0") -> str:
    # Job 11 started 20 s before its start line (srun, imports, build): the observed start-up.
    lines = [sacct_line("11", last_state, T0 - 20, 1567, code)]
    lines += [sacct_line(str(i), "CANCELLED by 0", None, 0) for i in range(12, 16)]
    return "\n".join(lines) + "\n"
