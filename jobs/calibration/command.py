"""Calibrating the user's own training command: run it on the node, read its steps as they
come, stop it once the steady step time is known, and measure what the harness measures
for a built-in workload. Standard library only.

The command is told to train ``calibration.max_steps`` steps and to save every
``checkpoint_interval_steps`` into the scratch folder; its progress goes to a file of its own
(``<progress_path>.command.jsonl``), which this module reads and relays to the CLI's live
progress file in the harness's format. With ``report: trainer_state`` the step times come
from the Trainer's checkpoint-N folders instead (jobs.training.trainer_relay.TrainerStateRelay
writes them as progress lines), one time per save interval.

It is stopped (SIGUSR2 for ``progress``, which jobs.report turns into a save and a clean
exit; SIGTERM for a Trainer, which has no handler of its own; SIGKILL after stop_grace_s)
once the steady CI reaches the target with min_steps steady steps and a checkpoint seen, or
at max_steps / max_seconds, or when it exits by itself. It is stopped and reaped on every
way out of here, exceptions and Ctrl-C included. jobs.calibration.command_run runs and watches
it, jobs.calibration.command_reports reads what it reports; this module prepares the run and
makes the Measurement of it.

What a command cannot tell is filled in as follows: import_s and build_s are 0.0 (start-up
is one figure, from this process's start to the first step's start); data_share is 0.0;
checkpoint_load_s is the save time when the command reported no ``resume`` line (a
calibration starts fresh); peak memory is the largest ``peak_memory_bytes`` a step line
reported (CUDA max allocated), else the peak RSS of the command's processes
(RUSAGE_CHILDREN); the device is CUDA when the command reported CUDA memory, the request
asks for CUDA, or (``auto``) this node has an NVIDIA GPU; the per-step counts come from the
``start`` line's extra fields, else samples_per_step = micro_batch x grad_accum and zeros.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from jobs.calibration import host, power, tail
from jobs.calibration.command_reports import Seen, Timing, finite
from jobs.calibration.command_run import CommandRun
from jobs.calibration.stats import SteadyEstimate, steady_estimate
from jobs.contract.command_fields import (
    environment,
    field_values,
    render,
    world_size,
)
from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest, Measurement
from jobs.node import threads

ECHO_BYTES = 64 * 1024  # of the command's output, echoed to this job's stderr at the end


def calibrate_command(request: CalibrationRequest) -> Measurement:
    """Run ``request.work.command`` until its steady step time is known; see the module text."""
    age_at_entry = host.process_age_s()
    launched_s = host.job_start_s(age_at_entry)
    entered = time.time()
    # $OMP_NUM_THREADS for the command, as jobs.train sets it for the run's.
    threading = threads.apply()
    trainer = request.work.report == "trainer_state"
    scratch = Path(request.scratch_dir)
    owns_scratch = not scratch.exists()
    base = (
        Path(request.progress_path)
        if request.progress_path
        else scratch.with_name(scratch.name + ".calibration")
    )
    own_progress = base.with_name(base.name + ".command.jsonl")
    log_path = base.with_name(base.name + ".command.log")
    interval = request.checkpoint_interval_steps or max(request.min_steps, 10)
    values = field_values(
        total_steps=request.max_steps,
        checkpoint_dir=str(scratch),
        checkpoint_interval_steps=interval,
        resume_from=None,
        progress_path=str(own_progress),
        stop_at=None,
        # Timed once when the plan will evaluate (the harness times one evaluation too).
        eval_interval_steps=interval if request.eval_batches > 0 else 0,
        micro_batch=request.work.micro_batch,
        grad_accum=request.work.grad_accum,
        seed=request.work.seed,
        output_dir=request.work.output_dir,
        ranks=world_size(os.environ),
    )
    try:
        argv = render(request.work.command, values)
    except ValueError as exc:
        raise NodeError("bad_command", f"command.run: {exc}") from exc
    cwd = request.workdir or os.getcwd()
    scratch.mkdir(parents=True, exist_ok=True)
    own_progress.parent.mkdir(parents=True, exist_ok=True)
    own_progress.unlink(missing_ok=True)  # ours alone: a rerun in the same folder starts clean
    run = CommandRun(request, argv, cwd, own_progress, log_path, interval, trainer)
    # The GPUs the command will see, idle before it starts (nothing read without a GPU).
    watch = None
    if _cuda_expected(request.work.device):
        watch = power.Watch(power.visible_selectors(dict(os.environ))).begin()
        entered += watch.idle_spent_s  # the command's start-up does not include this wait
    try:
        seen, timing, stopped_by = run.run(environment(values))
        gpu_power = _gpu_power(watch, seen, timing, trainer)
    finally:
        if watch is not None:
            watch.abandon()
        if owns_scratch:
            # Its checkpoints must not become ones a run resumes from, nor fill the disk.
            shutil.rmtree(scratch, ignore_errors=True)
        _echo_log(log_path)
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return _measurement(
        request,
        seen,
        timing,
        stopped_by,
        entered=entered,
        age_at_entry=age_at_entry,
        launched_s=launched_s,
        spawned=run.spawned,
        peak_rss=peak_rss,
        trainer=trainer,
        gpu_power=gpu_power,
        threading=threading,
    )


def _gpu_power(
    watch: power.Watch | None, seen: Seen, timing: Timing, trainer: bool
) -> power.PowerReading:
    """The GPUs' power over the command's steady steps: from the start of the first steady
    step (or save interval) to its last step line."""
    if watch is None:
        return power.unknown("the calibration ran on the CPU")
    if len(timing.times) < 2:
        return power.unknown("too few steps were timed")
    cut = steady_estimate(timing.times).warmup_steps
    if trainer:  # interval i runs from step line i to step line i + 1
        start = float(seen.steps[cut]["time"])
    else:
        timed = [e for e in seen.steps if finite(e.get("step_s")) is not None]
        start = float(timed[cut]["time"]) - float(timed[cut]["step_s"])
    return watch.finish(start, float(seen.steps[-1]["time"]))


def _measurement(
    request: CalibrationRequest,
    seen: Seen,
    timing: Timing,
    stopped_by: str,
    *,
    entered: float,
    age_at_entry: float,
    launched_s: float,
    spawned: float,
    peak_rss: int,
    trainer: bool,
    gpu_power: power.PowerReading,
    threading: threads.ThreadChoice,
) -> Measurement:
    est = steady_estimate(timing.times)
    cut = est.warmup_steps
    weights = timing.weights
    warm_steps = sum(weights[:cut])
    warm_total = sum(t * w for t, w in zip(timing.times[:cut], weights[:cut], strict=True))
    # Per-step figures from interval means: the spread of a mean of k steps is 1/sqrt(k)
    # of a step's (independent steps assumed).
    scale = math.sqrt(statistics.fmean(weights))
    per_step = tuple(t for t, w in zip(timing.times, weights, strict=True) for _ in range(w))
    first_start = _first_step_start(seen, timing, est, spawned, trainer)
    start = seen.start or {}
    peaks = [
        int(e["peak_memory_bytes"])
        for e in seen.steps
        if isinstance(e.get("peak_memory_bytes"), (int, float))
        and not isinstance(e.get("peak_memory_bytes"), bool)
    ]
    cuda = bool(peaks) or _cuda_expected(request.work.device)
    saves = [s for e in seen.saves if (s := finite(e.get("save_s"))) is not None]
    loads = [s for e in seen.resumes if (s := finite(e.get("load_s"))) is not None]
    evals = [s for e in seen.evals if (s := finite(e.get("eval_s"))) is not None]
    nbytes = [int(e["bytes"]) for e in seen.saves if isinstance(e.get("bytes"), int)]
    losses = [v for e in seen.steps if (v := finite(e.get("loss"))) is not None]
    save_s = statistics.median(saves) if saves else 0.0
    return Measurement(
        host=socket.gethostname(),
        device_kind="cuda" if cuda else "cpu",
        device_name=_gpu_name() if cuda else host.cpu_name(),
        versions=_versions(),
        params=_int(start.get("params"), 0),
        samples_per_step=_int(
            start.get("samples_per_step"), request.work.micro_batch * request.work.grad_accum
        ),
        tokens_per_sample=_int(start.get("tokens_per_sample"), 0),
        token_unit=str(start.get("token_unit") or ""),
        flops_per_step=finite(start.get("flops_per_step")) or 0.0,
        startup_s=age_at_entry + max(first_start - entered, 0.0),
        import_s=0.0,
        build_s=0.0,
        warmup_steps=warm_steps,
        warmup_extra_s=max(warm_total - warm_steps * est.mean, 0.0),
        steps_run=sum(weights),
        steady_steps=sum(weights[cut:]),
        step_mean_s=est.mean,
        step_median_s=est.median,
        step_std_s=est.std * scale,
        step_ci_half_s=est.ci_half_width,
        step_p90_s=est.p90,
        step_p99_s=tail.p99(timing.times[cut:]),
        data_share=0.0,
        stopped_by=stopped_by,
        target_ci=request.target_ci,
        peak_memory_bytes=max(peaks) if peaks else peak_rss,
        memory_kind="cuda_max_allocated" if peaks else "rss_peak",
        checkpoint_save_s=save_s,
        checkpoint_load_s=statistics.median(loads) if loads else save_s,
        checkpoint_bytes=max(nbytes, default=0),
        loss_first=losses[0] if losses else math.nan,
        loss_last=losses[-1] if losses else math.nan,
        step_times_s=per_step,
        eval_s=statistics.median(evals) if evals else 0.0,
        eval_batches=request.eval_batches if evals else 0,
        job_start_s=launched_s,
        power_w=gpu_power.power_w,
        idle_power_w=gpu_power.idle_w,
        power_source=gpu_power.source,
        step_raw_mean_s=est.raw_mean,
        torch_threads=threading.threads,
        threads_why=threading.why,
        returned_at=time.time(),
    )


def _first_step_start(
    seen: Seen, timing: Timing, est: SteadyEstimate, spawned: float, trainer: bool
) -> float:
    """Unix time the first step started."""
    if timing.began is None or not seen.steps:
        return spawned
    first = seen.steps[0]
    step_s = finite(first.get("step_s"))
    if not trainer or step_s is None:
        return timing.began
    # The first save interval ran from the command's start: start-up plus its steps, taken
    # at the steady pace.
    steps = first["step"] - seen.first_step
    return max(spawned + steps * (step_s - est.mean), spawned)


def _cuda_expected(device: str) -> bool:
    if device == "cuda":
        return True
    if device != "auto":
        return False
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    try:
        return any(Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return False


def _gpu_name() -> str:
    """The first NVIDIA GPU's model from the driver's /proc files (no torch, no nvidia-smi)."""
    try:
        for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CUDA device (model unknown)"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "plan-job": host.plan_job_version()}
    try:
        from importlib.metadata import version

        versions["submitit"] = version("submitit")
    except Exception:
        pass
    return versions


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return int(value)


def _echo_log(path: Path) -> None:
    """The command's output into this job's stderr, where a calibration's log is looked for."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - ECHO_BYTES, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return
    cut = f" (its last {ECHO_BYTES // 1024} KiB)" if size > ECHO_BYTES else ""
    print(f"plan-job calibrate: the command's output{cut}, from {path}:", file=sys.stderr)
    sys.stderr.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stderr.flush()
