"""Submit a function through submitit, watch it, cancel it on Ctrl-C, bring its result back.

submitit is imported lazily: it is light, but `plan-job --help` needs none of it.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.contract.failure import parse_failure
from jobs.contract.measurement import JOB_END_FILE, JOB_START_ENV
from planner.errors import (
    CancelledByUserError,
    CommandError,
    JobFailedError,
    OutOfMemoryError,
    PartitionLimitError,
    PendingTimeoutError,
    SpecError,
    SubmissionError,
)
from planner.shell import run_command
from planner.slurm.client import READ_TIMEOUT_S, classify, require_controller
from planner.slurm.options import CLUSTER_SETTINGS, JobShape, job_options, submitit_parameters
from planner.slurm.partition import PartitionLimits, read_partition
from planner.spec.run_spec import RunSpec
from planner.stop_signals import interrupted_by

POLL_S = 1.0
# submitit always asks Slurm for a time-limit signal (USR2); 90 s, its default, would eat most
# of a short calibration job's limit.
SIGNAL_DELAY_S = 30
SLURM_SIGNAL_JITTER_S = 60
STARTUP_ALLOWANCE_S = 60


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETING, FINISHED, ...
    reason: str  # squeue's reason while pending ("Resources", "Priority", ...)
    elapsed_s: float  # since submission
    node: str


@dataclass(frozen=True)
class Finished:
    result: Any
    job_id: str
    folder: Path
    stdout: Path
    stderr: Path
    queue_wait_s: float | None
    wall_s: float


def slurm_partitions() -> list[str]:
    """Partitions the Slurm controller reports; SlurmUnavailableError (exit 2) when there is
    no usable client or the controller does not answer (planner.slurm.client)."""
    require_controller(
        "--executor slurm",
        ("scontrol", "sbatch", "sinfo", "squeue"),
        "or use --executor local to calibrate on this machine",
    )
    try:
        out = run_command(["sinfo", "-h", "-o", "%R"], timeout=READ_TIMEOUT_S).stdout
    except CommandError as exc:
        unavailable = classify(exc, "use --executor local to calibrate on this machine")
        raise (unavailable or exc) from exc
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


def check_time_limit(time_limit_minutes: int, max_seconds: float) -> None:
    """The calibration must end before submitit's time-limit signal can arrive.

    Slurm sends --signal=USR2@SIGNAL_DELAY_S up to 60 s earlier than asked, and submitit's
    handler then ends a function that cannot checkpoint: the steps, start-up and checkpoint
    probe must fit before the earliest moment it may come.
    """
    needed = max_seconds + STARTUP_ALLOWANCE_S + SIGNAL_DELAY_S + SLURM_SIGNAL_JITTER_S
    if time_limit_minutes * 60 < needed:
        minutes = math.ceil(needed / 60)
        raise SpecError(
            "calibration.time_limit_minutes",
            time_limit_minutes,
            f"must be at least {minutes} with calibration.max_seconds = {max_seconds:g} "
            f"(steps + {STARTUP_ALLOWANCE_S} s start-up and checkpoint probe + "
            f"{SIGNAL_DELAY_S} s signal lead + {SLURM_SIGNAL_JITTER_S} s Slurm may signal early); "
            f"raise it or lower calibration.max_seconds",
        )


def check_submission(spec: RunSpec) -> PartitionLimits | None:
    """Every check that needs no job: raises before a folder or a job exists. Returns the
    partition's limits for a Slurm calibration (None for a local one)."""
    cal = spec.calibration
    if cal.executor == "local":
        return None
    partitions = slurm_partitions()
    partition = spec.cluster.partition
    if partition is not None and partition not in partitions:
        raise SpecError(
            "cluster.partition",
            partition,
            f"partitions on this cluster: {', '.join(partitions) or '(none)'}",
        )
    check_time_limit(cal.time_limit_minutes, cal.max_seconds)
    limits = read_partition(partition)
    check_time_within_partition(cal.time_limit_minutes, limits, spec.source)
    return limits


def check_time_within_partition(
    time_limit_minutes: int, partition: PartitionLimits, source: str | None = None
) -> None:
    """A --time above the partition's MaxTime is accepted by sbatch and then never runs: the
    job stays PENDING (PartitionTimeLimit) until the pending timeout. Refuse it here."""
    most = partition.max_time_minutes
    if most is not None and time_limit_minutes > most:
        raise PartitionLimitError(
            "calibration.time_limit_minutes",
            time_limit_minutes,
            f"at most {most}: partition {partition.name}'s MaxTime is {most} min, and a job "
            f"asking for more stays pending (PartitionTimeLimit); lower --time-limit or "
            f"calibration.max_seconds, or calibrate on another partition",
            source,
        )


def job_timing_lines(folder: Path) -> list[str]:
    """Lines of the calibration's batch script before its srun: they make its job start and
    end the way a run's jobs do, and time both (jobs.contract.measurement.Measurement.job_start_s,
    job_end_s)."""
    end_file = shlex.quote(str(folder.resolve() / JOB_END_FILE.format(job_id="")))
    return [
        f'export {JOB_START_ENV}="$(date +%s.%N)"',
        # A run's segment asks squeue for its end time before its srun: so does this job.
        'squeue -h -j "$SLURM_JOB_ID" -o %e >/dev/null 2>&1',
        f'_planjob_job_end={end_file}"$SLURM_JOB_ID"',
        """trap 'date +%s.%N > "$_planjob_job_end"' EXIT""",
    ]


def make_executor(
    spec: RunSpec, folder: Path, job_name: str, nodes: int = 1, tasks_per_node: int = 1
) -> Any:
    """submitit's executor for a calibration job of ``nodes`` x ``tasks_per_node`` ranks, one
    GPU each on a GPU cluster (the local executor runs one task on this machine)."""
    import submitit

    cal = spec.calibration
    if cal.executor == "local":
        local = submitit.LocalExecutor(folder=folder)
        gpus = local_gpu_parameters(cal.device, tasks_per_node, os.environ, count_local_gpus())
        local.update_parameters(timeout_min=cal.time_limit_minutes, **gpus)
        return local
    executor = submitit.SlurmExecutor(folder=folder)
    # One device per rank: a one-task calibration measures one device and the plan scales it;
    # a data-parallel one runs a rank per GPU as the run's jobs do.
    gres_gpus = tasks_per_node if spec.cluster.gpus_per_node > 0 else 0
    shape = JobShape(nodes, tasks_per_node, gres_gpus)
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": cal.time_limit_minutes,
        "signal_delay_s": SIGNAL_DELAY_S,
        "setup": job_timing_lines(folder),
        **submitit_parameters(job_options(spec.cluster, shape)),
    }
    executor.update_parameters(**params)
    return executor


LOCAL_CONTROLLER_LOG = "local-controller.log"


def submit_job(executor: Any, kind: str, folder: Path, function: Any, *args: Any) -> Any:
    """executor.submit(function, *args); for the local executor, with its controller's
    stdout and stderr in the job folder.

    submitit's local controller is a child process that inherits plan-job's stdout and
    stderr: on Ctrl-C (the terminal signals the whole process group) and on cancel (it is
    sent SIGINT) it printed its 12-24-line KeyboardInterrupt traceback above plan-job's
    clean message. Its output goes to LOCAL_CONTROLLER_LOG instead (the job's own output
    has its log files already)."""
    if kind != "local":
        return _submit_to_slurm(executor, function, *args)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCAL_CONTROLLER_LOG, "ab") as log:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            return executor.submit(function, *args)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _submit_to_slurm(executor: Any, function: Any, *args: Any) -> Any:
    """executor.submit; sbatch's refusal (a reservation or feature the cluster does not have,
    an account or qos it does not know) is a SubmissionError in sbatch's words, naming the
    cluster settings that reach it (planner.slurm.options), not submitit's traceback."""
    from submitit.core.utils import FailedJobError

    try:
        return executor.submit(function, *args)
    except FailedJobError as exc:
        said = [line.strip() for line in str(exc).splitlines() if line.strip()]
        fields = ", ".join(f"cluster.{setting.field}" for setting in CLUSTER_SETTINGS)
        raise SubmissionError(
            f"sbatch refused the calibration job: {' '.join(said[-3:]) or 'no reason given'}; "
            f"check {fields}"
        ) from None


def count_local_gpus(proc: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """NVIDIA GPUs on this machine, from the driver's /proc entries: the login side must not
    import torch to ask, and nvidia-smi can take seconds to answer."""
    try:
        return sum(1 for _ in proc.iterdir())
    except OSError:
        return 0


def local_gpu_parameters(
    device: str, tasks: int, environ: Mapping[str, str], gpus_here: int
) -> dict[str, Any]:
    """submitit.LocalExecutor parameters that let the local job see the GPUs it needs.

    The local executor sets CUDA_VISIBLE_DEVICES to its first gpus_per_node GPUs, which is
    empty by default: a `--device cuda` calibration would see none. A job that needs CUDA
    (calibration.device cuda, or auto on a machine with a GPU) gets one GPU per task, chosen
    among those the user's own CUDA_VISIBLE_DEVICES leaves visible.
    """
    if device == "cpu" or (device == "auto" and gpus_here == 0):
        return {}  # submitit hides every GPU: a CPU calibration stays off them
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return {"gpus_per_node": tasks}
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if len(ids) < tasks:
        raise SpecError(
            "calibration.device",
            device,
            f"the local job needs {tasks} GPU(s) but CUDA_VISIBLE_DEVICES={visible!r} leaves "
            f"{len(ids)} visible: unset it, list more GPUs, or use --device cpu",
        )
    if all(part.isdigit() for part in ids):
        return {"gpus_per_node": tasks, "visible_gpus": [int(part) for part in ids]}
    # GPU UUIDs or MIG names: submitit's visible_gpus takes indices only. Its setup lines run
    # in the job's shell after its own CUDA_VISIBLE_DEVICES, so this export wins.
    chosen = ",".join(ids[:tasks])
    return {"setup": [f"export CUDA_VISIBLE_DEVICES={shlex.quote(chosen)}"]}


class JobRunner:
    """Owns one submitted job until it ends: shows its state, cancels it on Ctrl-C."""

    def __init__(
        self,
        job: Any,
        executor_kind: str,
        pending_timeout_s: float,
        on_status: Callable[[JobStatus], None],
        partition: str | None = None,
    ) -> None:
        self.job = job
        self.kind = executor_kind
        self.pending_timeout_s = pending_timeout_s
        self.on_status = on_status
        self.partition = partition
        self.submitted = time.monotonic()
        self.started: float | None = None

    def wait(self) -> Finished:
        try:
            self._watch()
            result = self._result()
        except KeyboardInterrupt as exc:
            self._cancel()
            raise CancelledByUserError(
                f"interrupted{interrupted_by(exc)}: cancelled job {self.job.job_id}",
                job_id=str(self.job.job_id),
                log_path=Path(self.job.paths.stderr),
            ) from None
        paths = self.job.paths
        queue = self.started - self.submitted if self.started is not None else None
        return Finished(
            result,
            str(self.job.job_id),
            Path(paths.folder),
            Path(paths.stdout),
            Path(paths.stderr),
            queue,
            time.monotonic() - self.submitted,
        )

    def status(self) -> JobStatus:
        elapsed = time.monotonic() - self.submitted
        if self.kind == "local":
            state = self.job.state
            return JobStatus(str(self.job.job_id), state, "", elapsed, "localhost")
        return self._squeue_status(elapsed)

    def _squeue_status(self, elapsed: float) -> JobStatus:
        job_id = str(self.job.job_id)
        try:
            out = run_command(
                ["squeue", "-h", "-j", job_id, "-o", "%T|%r|%N"], check=False, timeout=30
            ).stdout.strip()
        except CommandError:
            out = ""
        if not out:
            return JobStatus(job_id, "FINISHED", "", elapsed, "")
        state, reason, node = [*out.splitlines()[0].split("|"), "", "", ""][:3]
        return JobStatus(job_id, state, "" if reason == "None" else reason, elapsed, node)

    def _watch(self) -> None:
        while True:
            status = self.status()
            if status.state in ("RUNNING", "COMPLETING") and self.started is None:
                self.started = time.monotonic()
            self.on_status(status)
            if status.state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
                return
            if status.state == "PENDING" and status.elapsed_s > self.pending_timeout_s:
                self._cancel()
                raise PendingTimeoutError(
                    f"job {status.job_id} was still pending after {status.elapsed_s:.0f} s "
                    f"(calibration.pending_timeout_s = {self.pending_timeout_s:g}) in partition "
                    f"{self.partition or '(default)'}; squeue's reason: "
                    f"{status.reason or 'none given'}. Cancelled it.",
                    job_id=status.job_id,
                )
            time.sleep(POLL_S)

    def _result(self) -> Any:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            # results(), not result(): for a job of several tasks (a multi-node calibration)
            # result() asserts on its sub-jobs; task 0's result is the calibration's.
            return self.job.results()[0]
        except FailedJobError as exc:
            raise self._failure(str(exc)) from None
        except UncompletedJobError as exc:
            raise JobFailedError(
                f"job {self.job.job_id} ended without a result: {exc}",
                job_id=str(self.job.job_id),
                log_path=Path(self.job.paths.stderr),
                stderr_tail=self._stderr_tail(),
            ) from None

    def _failure(self, text: str) -> JobFailedError:
        parsed = parse_failure(text)
        job_id = str(self.job.job_id)
        log_path = Path(self.job.paths.stderr)
        tail = self._stderr_tail()
        if parsed is not None and parsed.get("kind") == "oom":
            return OutOfMemoryError(
                parsed["message"], job_id=job_id, log_path=log_path, stderr_tail=tail
            )
        if parsed is not None:
            return JobFailedError(
                f"job {job_id} failed: {parsed['message']}",
                job_id=job_id,
                log_path=log_path,
                stderr_tail=tail,
            )
        last = [line for line in text.strip().splitlines() if line.strip()]
        summary = last[-1] if last else "no error text"
        return JobFailedError(
            f"job {job_id} failed: {summary}", job_id=job_id, log_path=log_path, stderr_tail=tail
        )

    def _stderr_tail(self, lines: int = 15) -> str:
        try:
            text = Path(self.job.paths.stderr).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def _cancel(self) -> None:
        # Best effort: we are already on a failure path and must not mask it.
        with contextlib.suppress(Exception):
            self.job.cancel(check=False)
        if self.kind == "local":
            # submitit's local cancel sends SIGINT only; make sure the process is gone.
            process = getattr(self.job, "_process", None)
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
