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
way out of here, exceptions and Ctrl-C included.

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

import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.calibration import host
from jobs.calibration.stats import SteadyEstimate, steady_estimate
from jobs.calibration.steps import LiveProgress, ci_if_ready
from jobs.contract.command_fields import (
    REPORT_MODES,
    environment,
    field_values,
    render,
    world_size,
)
from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest, Measurement
from jobs.node import process
from jobs.progress import ProgressWriter
from jobs.training.trainer_relay import TrainerStateRelay

POLL_S = 0.2
TAIL_LINES = 20  # of the command's output, in a failure's message
ECHO_BYTES = 64 * 1024  # of the command's output, echoed to this job's stderr at the end
# The grace after Ctrl-C or the job's time limit: the job is ending, a save is not wanted.
ABORT_GRACE_S = 2.0
_OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "HIP out of memory")


@dataclass
class _Seen:
    """What the command has reported so far (its progress lines)."""

    start: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    saves: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start" and self.start is None:
            self.start = event
        elif kind == "step" and isinstance(event.get("step"), int):
            self.steps.append(event)
        elif kind == "checkpoint":
            self.saves.append(event)
        elif kind == "eval":
            self.evals.append(event)
        elif kind == "resume":
            self.resumes.append(event)

    @property
    def first_step(self) -> int:
        start = self.start.get("step") if self.start is not None else 0
        return start if isinstance(start, int) else 0

    @property
    def steps_done(self) -> int:
        return self.steps[-1]["step"] - self.first_step if self.steps else 0


@dataclass(frozen=True)
class _Timing:
    """Step times as samples: one per step line (``progress``), or one per save interval
    (``trainer_state``: each the interval's mean, ``weights`` its steps)."""

    times: tuple[float, ...]
    weights: tuple[int, ...]
    began: float | None  # Unix time the first timed step started; None before one


class _Tail:
    """Reads the lines appended to a JSONL file since the last call; a line still being
    written waits for its newline."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def calibrate_command(request: CalibrationRequest) -> Measurement:
    """Run ``request.command`` until its steady step time is known; see the module text."""
    age_at_entry = host.process_age_s()
    launched_s = host.job_start_s(age_at_entry)
    entered = time.time()
    if request.report not in REPORT_MODES:
        raise NodeError(
            "bad_request", f"report {request.report!r} is not one of {', '.join(REPORT_MODES)}"
        )
    if request.report == "trainer_state" and not request.output_dir:
        raise NodeError(
            "bad_request", "report 'trainer_state' needs command.output_dir (the Trainer's)"
        )
    trainer = request.report == "trainer_state"
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
        micro_batch=request.micro_batch,
        grad_accum=request.grad_accum,
        seed=request.seed,
        output_dir=request.output_dir,
        ranks=world_size(os.environ),
    )
    try:
        argv = render(request.command, values)
    except ValueError as exc:
        raise NodeError("bad_command", f"command.run: {exc}") from exc
    cwd = request.workdir or os.getcwd()
    scratch.mkdir(parents=True, exist_ok=True)
    own_progress.parent.mkdir(parents=True, exist_ok=True)
    own_progress.unlink(missing_ok=True)  # ours alone: a rerun in the same folder starts clean
    run = _CommandRun(request, argv, cwd, own_progress, log_path, interval, trainer)
    try:
        seen, timing, stopped_by = run.run(environment(values))
    finally:
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
    )


class _CommandRun:
    def __init__(
        self,
        request: CalibrationRequest,
        argv: list[str],
        cwd: str,
        progress_path: Path,
        log_path: Path,
        interval: int,
        trainer: bool,
    ) -> None:
        self.request, self.argv, self.cwd = request, argv, cwd
        self.progress_path, self.log_path = progress_path, log_path
        self.interval, self.trainer = interval, trainer
        self.spawned = 0.0
        self.decided_at: int | None = None  # step lines seen when the stop was decided

    def run(self, fields_env: dict[str, str]) -> tuple[_Seen, _Timing, str]:
        """Start, watch and stop the command: what it reported, its step times and why it
        stopped. NodeError when it gave too little."""
        request = self.request
        env = {**os.environ, **fields_env}
        print(
            f"plan-job calibrate: running {shlex.join(self.argv)} (in {self.cwd}; "
            f"output in {self.log_path})",
            file=sys.stderr,
            flush=True,
        )
        stop_signal = signal.SIGTERM if self.trainer else signal.SIGUSR2
        seen, tail, relay, writer = _Seen(), _Tail(self.progress_path), None, None
        live = LiveProgress(request.progress_path)
        with open(self.log_path, "wb") as log:
            self.spawned = time.time()
            try:
                proc = process.spawn(self.argv, env, self.cwd, stdout=log, stderr=subprocess.STDOUT)
            except OSError as exc:
                live.close()
                raise NodeError(
                    "command_not_found",
                    f"cannot start {self.argv[0]!r} in {self.cwd}: {exc.strerror or exc}; "
                    "command.run's first word must be a program on PATH on the node, or a "
                    "path (relative to the working directory)",
                ) from exc
            grace = request.stop_grace_s
            try:
                if self.trainer:
                    writer = ProgressWriter(self.progress_path)
                    writer.start(0, request.max_steps, 0)
                    samples = request.micro_batch * request.grad_accum
                    relay = TrainerStateRelay(request.output_dir, writer, 0, self.spawned, samples)
                stopped_by = self._watch(proc, seen, tail, relay, live)
            except NodeError:
                grace = ABORT_GRACE_S
                raise
            except BaseException as exc:
                grace = ABORT_GRACE_S
                if type(exc).__name__ == "UncompletedJobError":
                    # submitit's handler of the Slurm time-limit signal raises where we wait.
                    raise NodeError(
                        "time_limit",
                        f"the calibration job reached its time limit while the command ran "
                        f"(at step {seen.steps_done}): raise calibration.time_limit_minutes "
                        "or lower calibration.max_seconds",
                    ) from exc
                raise
            finally:
                status = process.stop(proc, stop_signal, grace)
                live.close()
                try:
                    # What it wrote as it saved and left: a save on the signal, its stop line.
                    if relay is not None:
                        relay.poll()
                finally:
                    if writer is not None:
                        writer.close()
            for event in tail.read():
                seen.add(event)
        if stopped_by is None:
            stopped_by = self._after_exit(seen, status)
        elif self.decided_at is not None:
            # The steps the stop was decided on: those after it wind down (the signal lands
            # mid-step), and a CI said to be within target must be the one recorded.
            del seen.steps[self.decided_at :]
        timing = _timing(seen, self.trainer)
        if len(timing.times) < 2:
            raise self._too_few(seen, status, exited=stopped_by == "exited")
        return seen, timing, stopped_by

    def _watch(
        self,
        proc: subprocess.Popen[bytes],
        seen: _Seen,
        tail: _Tail,
        relay: TrainerStateRelay | None,
        live: Any,
    ) -> str | None:
        """Poll until a stop condition; its stopped_by, or None when the command exited."""
        request = self.request
        relayed = 0
        ci: float | None = None
        while True:
            exited = proc.poll() is not None
            if relay is not None:
                relay.poll()
            new = tail.read()
            for event in new:
                seen.add(event)
            if exited:
                return None
            now = time.time()
            timing = _timing(seen, self.trainer)
            if new and len(timing.times) >= 2:
                ci = _ci_if_ready(timing, request.min_steps, self.trainer)
            for event in seen.steps[relayed:]:
                elapsed = now - (timing.began or self.spawned)
                live.write(event["step"] - seen.first_step, elapsed, ci)
            relayed = self.decided_at = len(seen.steps)
            if seen.steps_done >= request.max_steps:
                return "step_cap"
            saved = bool(seen.saves) or seen.steps_done >= 3 * self.interval
            if ci is not None and ci <= request.target_ci and saved:
                return "ci_target"
            if timing.began is None:
                if now - self.spawned >= request.max_seconds:
                    raise self._no_steps()
            elif now - timing.began >= request.max_seconds:
                if len(timing.times) < 2:
                    raise self._too_few(seen, 0, exited=False)
                return "time_cap"
            time.sleep(POLL_S)

    def _after_exit(self, seen: _Seen, status: int) -> str:
        """stopped_by for a command that exited by itself; NodeError when it did so
        before the calibration had enough steps."""
        request = self.request
        if seen.steps_done >= request.max_steps:
            return "step_cap"
        timing = _timing(seen, self.trainer)
        steady_enough = sum(timing.weights) >= request.min_steps and len(timing.times) >= 2
        if not steady_enough:
            raise self._too_few(seen, status, exited=True)
        if status != 0:
            print(
                f"plan-job calibrate: warning: the command {process.describe_status(status)} "
                f"by itself at step {seen.steps_done}, after enough steps to measure",
                file=sys.stderr,
            )
        return "exited"

    def _too_few(self, seen: _Seen, status: int, exited: bool) -> NodeError:
        request = self.request
        tail = _log_tail(self.log_path)
        if status != 0 and exited:
            if any(marker in tail for marker in _OOM_MARKERS):
                return NodeError(
                    "oom",
                    f"CUDA out of memory in the command at micro-batch {request.micro_batch} "
                    f"(precision {request.precision}); lower batch.micro_batch and raise "
                    f"grad_accum (the command gets them as {{micro_batch}} and {{grad_accum}}); "
                    f"log {self.log_path}:\n{tail}",
                    micro_batch=request.micro_batch,
                )
            return NodeError(
                "command_failed",
                f"the command {process.describe_status(status)} after {seen.steps_done} "
                f"step(s), before the calibration had {request.min_steps}: "
                f"{shlex.join(self.argv)} (in {self.cwd}); log {self.log_path}, last lines:\n"
                f"{tail}",
                returncode=status,
                log_path=str(self.log_path),
            )
        if exited:
            return NodeError(
                "too_few_steps",
                f"the command exited by itself after {seen.steps_done} step(s), before the "
                f"calibration had {request.min_steps}: it must train to {{total_steps}} "
                f"(here {request.max_steps}), or lower calibration.min_steps; "
                f"log {self.log_path}, last lines:\n{tail}",
                log_path=str(self.log_path),
            )
        return NodeError(
            "too_few_steps",
            f"the command reported {seen.steps_done} step(s), too few to time (at least two "
            + ("save intervals after the first" if self.trainer else "step lines")
            + f" are needed); raise calibration.max_seconds or max_steps; log {self.log_path}",
            log_path=str(self.log_path),
        )

    def _no_steps(self) -> NodeError:
        request = self.request
        if self.trainer:
            how = (
                f"no checkpoint-N folder with a trainer_state.json appeared in "
                f"{request.output_dir}: give the Trainer output_dir={{output_dir}}, "
                f"save_strategy='steps' and save_steps={{checkpoint_interval_steps}} (here "
                f"{self.interval}; a smaller calibration.checkpoint interval gives the first "
                "sooner), or write progress lines with jobs.report and report: progress"
            )
        else:
            how = (
                f"no 'step' line reached {self.progress_path} ($PLANJOB_PROGRESS_PATH): "
                "report steps with jobs.report (or the callbacks jobs.hf_callback / "
                "jobs.lightning_callback), or use report: trainer_state with output_dir and "
                "the Trainer's save_steps mapped to {checkpoint_interval_steps}"
            )
        return NodeError(
            "no_steps",
            f"the command reported no step within calibration.max_seconds "
            f"({request.max_seconds:g} s): {how}; log {self.log_path}, last lines:\n"
            f"{_log_tail(self.log_path)}",
            log_path=str(self.log_path),
        )


def _timing(seen: _Seen, trainer: bool) -> _Timing:
    if not trainer:
        times, began = [], None
        for event in seen.steps:
            step_s = finite(event.get("step_s"))
            if step_s is None:
                continue
            if began is None:
                began = float(event["time"]) - step_s
            times.append(step_s)
        return _Timing(tuple(times), (1,) * len(times), began)
    # The first interval runs from the command's start: start-up, not steps.
    times_w: list[tuple[float, int]] = []
    previous, began = seen.first_step, None
    for index, event in enumerate(seen.steps):
        step_s, steps = finite(event.get("step_s")), event["step"] - previous
        previous = event["step"]
        if index == 0:
            began = float(event["time"])
            continue
        if step_s is not None and steps > 0:
            times_w.append((step_s, steps))
    return _Timing(tuple(t for t, _ in times_w), tuple(w for _, w in times_w), began)


def _ci_if_ready(timing: _Timing, min_steps: int, trainer: bool) -> float | None:
    if not trainer:
        return ci_if_ready(list(timing.times), min_steps)
    # Save intervals are few: the harness's margin from MSER's bound (5 samples) would never
    # be met. Warm-up must still end well inside the series.
    n = len(timing.times)
    if n < 4:
        return None
    est = steady_estimate(timing.times)
    steady_steps = sum(timing.weights[est.warmup_steps :])
    if steady_steps < min_steps or est.warmup_steps >= n // 2:
        return None
    return est.ci_relative


def _measurement(
    request: CalibrationRequest,
    seen: _Seen,
    timing: _Timing,
    stopped_by: str,
    *,
    entered: float,
    age_at_entry: float,
    launched_s: float,
    spawned: float,
    peak_rss: int,
    trainer: bool,
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
    cuda = bool(peaks) or _cuda_expected(request.device)
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
            start.get("samples_per_step"), request.micro_batch * request.grad_accum
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
        returned_at=time.time(),
    )


def _first_step_start(
    seen: _Seen, timing: _Timing, est: SteadyEstimate, spawned: float, trainer: bool
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


def _log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 64 * 1024, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no output)"
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept) if kept else "(no output)"


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


def finite(value: Any) -> float | None:
    """A number from a progress line as a finite float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
