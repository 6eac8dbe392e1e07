"""Calibration from the login node: spec -> job -> measurement -> record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.contract.measurement import JOB_END_FILE, CalibrationRequest, Measurement
from planner.calibration.record import CalibrationRecord, JobInfo, make_record
from planner.errors import BatchSplitError, JobFailedError, PartitionLimitError, SpecError
from planner.scaling.fit import ScalingPoint, make_section
from planner.slurm.partition import PartitionLimits, read_partition
from planner.slurm.submission import (
    JobRunner,
    JobStatus,
    check_submission,
    make_executor,
    submit_job,
)
from planner.spec.checkpoint_dir import check_writable
from planner.spec.run_spec import RunSpec
from planner.spec.work import build_work

PROGRESS_FILE = "calibration-progress.jsonl"


def job_folder(base: Path, spec: RunSpec) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)
    return base / f"{safe}-{stamp}-{os.getpid()}"


def build_request(spec: RunSpec, folder: Path, grad_accum: int | None = None) -> CalibrationRequest:
    """The job's request; ``grad_accum`` is the micro-batches per rank at the job's node count
    (spec.batch.grad_accum when not given)."""
    cal = spec.calibration
    scratch = Path(spec.checkpoint.dir).resolve() / f".calibration-probe-{folder.name}"
    accum = spec.batch.grad_accum if grad_accum is None else grad_accum
    # The calibration's saves go to the scratch folder: they must not become checkpoints the
    # run resumes from.
    work = build_work(spec, accum, scratch / "trainer-output")
    return CalibrationRequest(
        work=work,
        min_steps=cal.min_steps,
        max_steps=cal.max_steps,
        max_seconds=cal.max_seconds,
        target_ci=cal.target_ci,
        # The probe writes where the run's checkpoints will go: same filesystem, same speed.
        scratch_dir=str(scratch),
        progress_path=str(folder.resolve() / PROGRESS_FILE),
        # Timed when the run will evaluate: the plan's eval term comes from it.
        eval_batches=spec.plan.eval_batches if spec.plan.eval_interval_steps else 0,
        # A command runs in the folder calibrate was started in, as the run's jobs run in
        # the folder emit was.
        workdir=str(Path.cwd().resolve()) if spec.command is not None else "",
    )


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


def last_calibration_progress(folder: Path) -> dict[str, Any] | None:
    """The calibration harness's last progress line in a calibration job's folder, or None
    before the first step (a run's whole progress file is jobs.progress.read_progress's)."""
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


@dataclass(frozen=True)
class CalibrationRun:
    """One calibration job of a (possibly multi-node) calibration."""

    nodes: int
    tasks_per_node: int
    grad_accum: int  # micro-batches per rank per optimizer step: the global batch is kept

    @property
    def ranks(self) -> int:
        return self.nodes * self.tasks_per_node


def calibration_runs(spec: RunSpec) -> tuple[CalibrationRun, ...]:
    """The jobs calibration.nodes asks for, smallest first; BatchSplitError (naming
    calibration.nodes) when the global batch does not split over a count's ranks."""
    cal, batch = spec.calibration, spec.batch
    tasks = cal.resolved_tasks_per_node(spec.cluster.gpus_per_node)
    if cal.nodes == (1,) and tasks == 1:
        # The one-device calibration: the spec's own accumulation, as before multi-node runs.
        return (CalibrationRun(1, 1, batch.grad_accum),)
    runs = []
    for n in cal.nodes:
        per_pass = batch.micro_batch * n * tasks
        if batch.global_batch % per_pass:
            raise BatchSplitError(
                "calibration.nodes",
                list(cal.nodes),
                f"at {n} node(s) batch.global_batch = {batch.global_batch} must be a multiple "
                f"of micro_batch x GPUs = {batch.micro_batch} x {n * tasks} = {per_pass}: drop "
                f"{n} from calibration.nodes or change the batch",
                spec.source,
            )
        runs.append(CalibrationRun(n, tasks, batch.global_batch // per_pass))
    return tuple(runs)


def check_node_counts(spec: RunSpec, partition: PartitionLimits | None = None) -> None:
    """calibration.nodes and tasks_per_node against the executor, the batch and the
    partition's nodes (when known); raises SpecError before anything is submitted."""
    cal = spec.calibration
    if cal.executor == "local":
        if cal.nodes != (1,):
            raise SpecError(
                "calibration.nodes",
                list(cal.nodes),
                "the local executor runs on this machine, one node: calibrate several node "
                "counts with --executor slurm (calibration.executor: slurm), or set "
                "calibration.nodes to [1]",
                spec.source,
            )
        if cal.tasks_per_node not in (None, 1):
            raise SpecError(
                "calibration.tasks_per_node",
                cal.tasks_per_node,
                "the local executor runs one task: use --executor slurm, or drop it",
                spec.source,
            )
    runs = calibration_runs(spec)
    if spec.command is not None and (len(runs) > 1 or runs[0].ranks > 1):
        # Every task would start the whole command (jobs.entry refuses it on the node).
        raise SpecError(
            "calibration.nodes",
            list(cal.nodes),
            "a user's own command is calibrated in one task on one node: set "
            "calibration.nodes to [1] and drop calibration.tasks_per_node",
            spec.source,
        )
    if partition is None:
        return
    most = min(partition.total_nodes, partition.max_nodes or partition.total_nodes)
    if max(cal.nodes) > most:
        raise PartitionLimitError(
            "calibration.nodes",
            list(cal.nodes),
            f"at most {most}: partition {partition.name} allows {most} nodes per job",
            spec.source,
        )


def calibrate(
    spec: RunSpec,
    folder: Path,
    on_status: Callable[[JobStatus], None] = lambda _s: None,
    on_run: Callable[[CalibrationRun, int, int, Path], None] = lambda _r, _i, _n, _f: None,
) -> CalibrationRecord:
    """Submit the calibration job(s) described by ``spec`` and wait for its record.

    One job per calibration.nodes count, one after another (each waits for the previous to
    end: they would otherwise compete for the same nodes and links); ``on_run(run, index,
    count, folder)`` is called before each. Raises BadInputError subclasses before anything is
    submitted, JobError subclasses after.
    """
    check_node_counts(spec)
    partition = check_submission(spec)
    # The job's checkpoint probe writes there after its timed steps: a folder that cannot be
    # written would fail the job minutes in, not here in a second.
    check_writable(Path(spec.checkpoint.dir).resolve(), spec.source)
    if spec.calibration.executor == "slurm" and max(spec.calibration.nodes) > 1:
        check_node_counts(spec, partition or read_partition(spec.cluster.partition))
    runs = calibration_runs(spec)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(
            "--jobs-dir", str(folder.parent), f"cannot make the job's folder: {exc.strerror}"
        ) from None
    done: list[tuple[CalibrationRun, Measurement, JobInfo]] = []
    for index, run in enumerate(runs, start=1):
        run_folder = folder if len(runs) == 1 else folder / f"nodes-{run.nodes}"
        run_folder.mkdir(parents=True, exist_ok=True)
        on_run(run, index, len(runs), run_folder)
        measurement, job = _calibrate_one(spec, run_folder, run, on_status, len(runs) > 1)
        done.append((run, measurement, job))
    run, measurement, job = done[0]
    scaling = None
    if len(done) > 1 or run.ranks > 1:
        points = [_point(r, m, j.job_id) for r, m, j in done]
        scaling = make_section(points, spec.plan, measurement.params)
    return make_record(spec, measurement, job, scaling)


def _calibrate_one(
    spec: RunSpec,
    folder: Path,
    run: CalibrationRun,
    on_status: Callable[[JobStatus], None],
    several: bool,
) -> tuple[Measurement, JobInfo]:
    from jobs import entry

    name = f"plan-job-cal-{spec.name}" + (f"-{run.nodes}n" if several else "")
    executor = make_executor(spec, folder, name, run.nodes, run.tasks_per_node)
    request = build_request(spec, folder, run.grad_accum)
    job = submit_job(executor, spec.calibration.executor, folder, entry.calibrate, request)
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
    if run.ranks > 1 and measurement.ranks != run.ranks:
        # A job that did not run data-parallel would fit a model to the wrong world size.
        raise JobFailedError(
            f"job {finished.job_id} measured {measurement.ranks} rank(s), not the "
            f"{run.nodes} node(s) x {run.tasks_per_node} task(s) = {run.ranks} it was given",
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
    return measurement, job_info


def _point(run: CalibrationRun, m: Measurement, job_id: str) -> ScalingPoint:
    return ScalingPoint(
        nodes=run.nodes,
        ranks=m.ranks,
        tasks_per_node=m.tasks_per_node,
        backend=m.backend,
        grad_accum=run.grad_accum,
        step_mean_s=m.step_mean_s,
        step_ci_half_s=m.step_ci_half_s,
        allreduce_times=tuple((int(b), float(t)) for b, t in m.allreduce_times),
        job_id=job_id,
    )
