"""The calibration harness: build the workload on the node, time real steps, stop when the
steady step time is known well enough, probe a checkpoint, report.

torch is imported inside calibrate() so the time to import it is measured as start-up.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import runtime
from jobs.measurement import JOB_START_ENV, CalibrationFailed, CalibrationRequest, Measurement
from jobs.stats import steady_estimate
from jobs.workloads.base import Workload, WorkloadConfig


def process_age_s() -> float:
    """Seconds since this process started, from the kernel's own record (Linux)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5); two fields precede the ")" split
        ticks = os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


# The CI (an MSER pass over all steps so far: milliseconds once there are thousands) is
# recomputed this often, not after every step, where it would cost more than a small step.
CI_CHECK_EVERY_S = 0.2


@dataclass(frozen=True)
class StepLog:
    step_times: list[float]
    load_times: list[float]
    losses: list[float]
    stopped_by: str


def job_start_s(age_s: float) -> float:
    """Seconds from the batch script's start (its $PLANJOB_JOB_START) to this process's; 0.0
    when the script did not say (a local job)."""
    try:
        script_start = float(os.environ[JOB_START_ENV])
    except (KeyError, ValueError):
        return 0.0
    return max(time.time() - age_s - script_start, 0.0)


def calibrate(request: CalibrationRequest) -> Measurement:
    age_at_entry = process_age_s()
    launched_s = job_start_s(age_at_entry)
    entry = time.perf_counter()
    import torch

    imported = time.perf_counter()
    device = runtime.resolve_device(request.device, torch)
    sync = runtime.synchronizer(device, torch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    workload = _build(request, device)
    built = time.perf_counter()
    try:
        steps = _run_steps(workload, request, sync)
        eval_s = _time_evaluation(workload, request, sync)
    except torch.cuda.OutOfMemoryError as exc:
        raise _oom(request, device, exc) from exc
    first_step_at = built  # the first step starts right after the build
    folder = Path(request.scratch_dir)
    from jobs import checkpoint

    timing = checkpoint.probe(workload, folder, device, sync)
    peak, memory_kind = _peak_memory(device, torch)
    est = steady_estimate(steps.step_times)
    steady_start = est.warmup_steps
    steady_total = sum(steps.step_times[steady_start:])
    counts = workload.counts
    return Measurement(
        host=socket.gethostname(),
        device_kind=device.type,
        device_name=_device_name(device, torch),
        versions=_versions(torch),
        params=counts.params,
        samples_per_step=counts.samples_per_step,
        tokens_per_sample=counts.tokens_per_sample,
        token_unit=counts.token_unit,
        flops_per_step=float(counts.flops_per_step),
        startup_s=age_at_entry + (first_step_at - entry),
        import_s=age_at_entry + (imported - entry),
        build_s=built - imported,
        warmup_steps=est.warmup_steps,
        warmup_extra_s=max(sum(steps.step_times[:steady_start]) - steady_start * est.mean, 0.0),
        steps_run=len(steps.step_times),
        steady_steps=est.n,
        step_mean_s=est.mean,
        step_median_s=est.median,
        step_std_s=est.std,
        step_ci_half_s=est.ci_half_width,
        step_p90_s=est.p90,
        data_share=sum(steps.load_times[steady_start:]) / steady_total if steady_total else 0.0,
        stopped_by=steps.stopped_by,
        target_ci=request.target_ci,
        peak_memory_bytes=peak,
        memory_kind=memory_kind,
        checkpoint_save_s=timing.save_s,
        checkpoint_load_s=timing.load_s,
        checkpoint_bytes=timing.nbytes,
        loss_first=steps.losses[0],
        loss_last=steps.losses[-1],
        step_times_s=tuple(steps.step_times),
        load_times_s=tuple(steps.load_times),
        eval_s=eval_s,
        eval_batches=request.eval_batches,
        job_start_s=launched_s,
        returned_at=time.time(),
    )


def _build(request: CalibrationRequest, device: Any) -> Workload:
    config = WorkloadConfig(
        preset=request.preset,
        overrides=dict(request.overrides),
        micro_batch=request.micro_batch,
        grad_accum=request.grad_accum,
        precision=request.precision,
        device=str(device),
        seed=request.seed,
    )
    return runtime.build_workload(request.builder_path, config, device)


def _run_steps(
    workload: Workload, request: CalibrationRequest, sync: Callable[[], None]
) -> StepLog:
    step_times: list[float] = []
    load_times: list[float] = []
    losses: list[float] = []
    progress = _ProgressWriter(request.progress_path)
    started = checked = t0 = time.perf_counter()
    ci: float | None = None
    stopped_by = "step_cap"
    while len(step_times) < request.max_steps:
        batch = workload.next_batch()
        sync()
        t1 = time.perf_counter()
        try:
            loss = workload.train_step(batch)
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise
            if type(exc).__name__ == "UncompletedJobError":
                # submitit's handler of the Slurm time-limit signal raises inside the step.
                raise CalibrationFailed(
                    "time_limit",
                    f"the calibration job reached its time limit at step {len(step_times) + 1}: "
                    "raise calibration.time_limit_minutes or lower calibration.max_seconds",
                ) from exc
            raise CalibrationFailed(
                "workload_error",
                f"training step {len(step_times) + 1} "
                f"raised {type(exc).__name__}: {exc}{runtime.where(exc)}",
            ) from exc
        sync()
        losses.append(float(loss))
        progress.write(len(step_times) + 1, time.perf_counter() - started, ci)
        # A step as a training loop runs it: its data, the step, reading the loss back and
        # a progress line. The CI check below is the harness's own work: it stays out.
        t2 = time.perf_counter()
        step_times.append(t2 - t0)
        load_times.append(t1 - t0)
        if t2 - checked >= CI_CHECK_EVERY_S:
            ci = _ci_if_ready(step_times, request.min_steps)
            checked = time.perf_counter()
            if ci is not None and ci <= request.target_ci:
                stopped_by = "ci_target"
                break
        if t2 - started >= request.max_seconds and len(step_times) >= 2:
            stopped_by = "time_cap"
            break
        t0 = time.perf_counter()
    progress.close()
    return StepLog(step_times, load_times, losses, stopped_by)


def _time_evaluation(
    workload: Workload, request: CalibrationRequest, sync: Callable[[], None]
) -> float:
    """One evaluation as the run will do it, after the steps: the model is warm, as it is
    at the run's first evaluation. 0.0 when the spec asks for none."""
    if request.eval_batches <= 0:
        return 0.0
    seconds, _loss = runtime.evaluate(workload, request.eval_batches, sync)
    return seconds


def _ci_if_ready(step_times: list[float], min_steps: int) -> float | None:
    """The steady CI, once it can be trusted: enough steady steps, and warm-up clearly over.

    MSER may cut at most half the series; a cut near that bound means the times are still
    trending, and a CI computed then would be spuriously narrow.
    """
    if len(step_times) < min_steps:
        return None
    est = steady_estimate(step_times)
    if est.n < min_steps or est.warmup_steps > len(step_times) // 2 - 5:
        return None
    return est.ci_relative


class _ProgressWriter:
    """Appends a JSON line per step so the CLI can show live progress; never fails the run."""

    def __init__(self, path: str | None) -> None:
        self._handle = None
        if path:
            try:
                self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError:
                self._handle = None

    def write(self, step: int, elapsed: float, ci: float | None) -> None:
        if self._handle is not None:
            line = {"step": step, "elapsed_s": round(elapsed, 4), "ci_rel": ci}
            self._handle.write(json.dumps(line) + "\n")
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _oom(request: CalibrationRequest, device: Any, exc: BaseException) -> CalibrationFailed:
    return runtime.oom_failure(request.micro_batch, request.precision, device, exc)


def _peak_memory(device: Any, torch: Any) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_peak"


def _device_name(device: Any, torch: Any) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return cpu_name()


def _versions(torch: Any) -> dict[str, str]:
    import submitit

    versions = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "submitit": str(submitit.__version__),
        "plan-job": _plan_job_version(),
    }
    if torch.version.cuda:
        versions["cuda"] = str(torch.version.cuda)
    return versions


def _plan_job_version() -> str:
    try:
        from importlib.metadata import version

        return version("plan-job")
    except Exception:
        return "unknown"


def cpu_name() -> str:
    """A readable CPU model name for the record (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
