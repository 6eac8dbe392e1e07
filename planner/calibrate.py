"""Calibration from the login node: spec -> job -> measurement -> record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.measurement import JOB_END_FILE, CalibrationRequest, Measurement
from planner.errors import JobFailedError
from planner.record import CalibrationRecord, JobInfo, make_record
from planner.spec import RunSpec
from planner.submission import JobRunner, JobStatus, check_submission, make_executor

PROGRESS_FILE = "calibration-progress.jsonl"


def job_folder(base: Path, spec: RunSpec) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)
    return base / f"{safe}-{stamp}-{os.getpid()}"


def build_request(spec: RunSpec, folder: Path) -> CalibrationRequest:
    cal = spec.calibration
    scratch = Path(spec.checkpoint.dir).resolve() / f".calibration-probe-{folder.name}"
    return CalibrationRequest(
        builder_path=spec.workload.builder_path,
        workload_name=spec.workload.name,
        preset=spec.workload.preset,
        overrides=dict(spec.workload.overrides),
        micro_batch=spec.batch.micro_batch,
        grad_accum=spec.batch.grad_accum,
        precision=spec.precision,
        device=cal.device,
        seed=cal.seed,
        min_steps=cal.min_steps,
        max_steps=cal.max_steps,
        max_seconds=cal.max_seconds,
        target_ci=cal.target_ci,
        # The probe writes where the run's checkpoints will go: same filesystem, same speed.
        scratch_dir=str(scratch),
        progress_path=str(folder.resolve() / PROGRESS_FILE),
        # Timed when the run will evaluate: the plan's eval term comes from it.
        eval_batches=spec.plan.eval_batches if spec.plan.eval_interval_steps else 0,
        **_command_fields(spec, scratch),
    )


def _command_fields(spec: RunSpec, scratch: Path) -> dict[str, Any]:
    command = spec.command
    if command is None:
        return {}
    return {
        "command": command.argv,
        "report": command.report,
        # The calibration's saves go to the scratch folder: they must not become checkpoints
        # the run resumes from.
        "output_dir": str(scratch / "trainer-output") if command.output_dir else "",
        "stop_grace_s": command.stop_grace_s,
        "workdir": str(Path.cwd().resolve()),
    }


def with_job_end(m: Measurement, folder: Path, job_id: str, wait_s: float = 5.0) -> Measurement:
    """The measurement with job_end_s, from the end time the job's script wrote as it ended
    (a Slurm job; a local one writes none and keeps 0.0)."""
    path = folder / JOB_END_FILE.format(job_id=job_id)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ended = float(path.read_text().strip())
            break
        except (OSError, ValueError):
            # The scheduler may report the job done a moment before its script's trap ran.
            if not m.job_start_s or time.monotonic() > deadline:
                return m
            time.sleep(0.2)
    if not m.returned_at:
        return m
    return dataclasses.replace(m, job_end_s=max(ended - m.returned_at, 0.0))


def read_progress(folder: Path) -> dict[str, Any] | None:
    """The harness's last progress line, or None before the first step."""
    try:
        with open(folder / PROGRESS_FILE, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - 4096, 0))
            lines = handle.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
    return None


def calibrate(
    spec: RunSpec, folder: Path, on_status: Callable[[JobStatus], None] = lambda _s: None
) -> CalibrationRecord:
    """Submit the calibration job described by ``spec`` and wait for its record.

    Raises BadInputError subclasses before anything is submitted, JobError subclasses after.
    """
    from jobs import entry

    check_submission(spec)
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(spec, folder, job_name=f"plan-job-cal-{spec.name}")
    request = build_request(spec, folder)
    job = executor.submit(entry.calibrate, request)
    runner = JobRunner(
        job,
        spec.calibration.executor,
        spec.calibration.pending_timeout_s,
        on_status,
        spec.cluster.partition,
    )
    finished = runner.wait()
    measurement = finished.result
    if not isinstance(measurement, Measurement):
        raise JobFailedError(
            f"job {finished.job_id} returned {type(measurement).__name__}, not a measurement",
            job_id=finished.job_id,
            log_path=finished.stderr,
        )
    measurement = with_job_end(measurement, finished.folder, finished.job_id)
    job_info = JobInfo(
        executor=spec.calibration.executor,
        job_id=finished.job_id,
        folder=str(finished.folder),
        stdout=str(finished.stdout),
        stderr=str(finished.stderr),
        queue_wait_s=finished.queue_wait_s,
        wall_s=finished.wall_s,
    )
    return make_record(spec, measurement, job_info)
