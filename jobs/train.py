"""The training entry that generated sbatch scripts run: ``python -m jobs.train CONFIG.json
[--stop-at UNIX_SECONDS]``.

It trains the workload of CONFIG.json (a jobs.train_config.TrainConfig) towards
``total_steps`` and leaves when that is done, when SIGUSR2 or SIGTERM arrives, or before the
stop time (``--stop-at``, else ``$PLANJOB_STOP_AT``; neither: no limit) would cut the next
step and its save short. Each way out saves a checkpoint first, so the next job of the run
resumes from the newest readable one. The workload's RNG streams (torch.Generator objects in
``Workload.extra_state``) and torch's global RNGs are checkpointed too, which makes a resumed
run bit-identical to an uninterrupted one on CPU.

Exit status: 0 done or cleanly stopped, 1 the workload (or its checkpoint) failed, 2 bad
config file or arguments. torch is imported only once training starts: the login node
imports this module.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import runtime
from jobs.measurement import CalibrationFailed, parse_failure
from jobs.progress import ProgressWriter, read_progress
from jobs.train_config import TrainConfig
from jobs.workloads.base import Workload, WorkloadConfig

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
STOP_AT_ENV = "PLANJOB_STOP_AT"
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
RECENT_STEPS = 5  # the next step is assumed to take as long as the slowest of these
CHECKPOINT_FORMAT = "plan-job/checkpoint/v1"


class StopRequest:
    """Set by SIGUSR2/SIGTERM; the loop looks at it between steps, never inside one."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum).name


def main(argv: list[str] | None = None) -> int:
    stop = StopRequest()
    stop.install()  # first: Slurm's signal may come while torch is still importing
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description="Train towards the run's total_steps from its newest checkpoint; save and "
        "exit 0 when done, on SIGUSR2/SIGTERM, or before the stop time.",
    )
    parser.add_argument("config", type=Path, help="the run's TrainConfig JSON")
    parser.add_argument(
        "--stop-at",
        type=float,
        metavar="UNIX_SECONDS",
        help=f"leave before this time (default: ${STOP_AT_ENV}; neither: no limit)",
    )
    args = parser.parse_args(argv)  # exits 2 on bad arguments
    try:
        config = TrainConfig.from_json(args.config.read_text(encoding="utf-8"))
        stop_at = args.stop_at if args.stop_at is not None else _stop_at_from_env()
    except (OSError, ValueError) as exc:
        print(f"plan-job train: bad config {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return train(config, stop_at, stop)
    except CalibrationFailed as exc:
        failure = parse_failure(str(exc)) or {"kind": exc.kind, "message": str(exc)}
        print(f"plan-job train: {failure['kind']}: {failure['message']}", file=sys.stderr)
        return EXIT_FAILED


def _stop_at_from_env() -> float | None:
    text = os.environ.get(STOP_AT_ENV, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"${STOP_AT_ENV}={text!r} is not Unix seconds") from None


@dataclass(frozen=True)
class Resumed:
    step: int
    path: Path
    state: dict[str, Any]
    read_s: float


def train(config: TrainConfig, stop_at: float | None, stop: StopRequest) -> int:
    """One job of the run: resume, step until done or told to stop, save, say why."""
    import torch

    from jobs import checkpoint

    folder = Path(config.checkpoint_dir)
    history = read_progress(config.progress_path)
    restart = sum(event["event"] == "start" for event in history)
    device = runtime.resolve_device(config.device, torch, setting="device")
    checkpoint.remove_stale_temporaries(folder)
    resumed = newest_readable(folder)
    first = resumed.step if resumed is not None else 0
    with ProgressWriter(config.progress_path) as progress:
        if first >= config.total_steps:
            progress.start(first, config.total_steps, restart)
            progress.stop(first, "done")
            print(f"plan-job train: already done: the newest checkpoint is step {first}")
            return EXIT_OK
        workload_config = _workload_config(config, device)
        workload = runtime.build_workload(config.builder_path, workload_config, device)
        run = Run(config, workload, device, progress, stop, stop_at, history)
        if resumed is None:
            progress.start(first, config.total_steps, restart)
        else:
            load_s = run.restore(resumed)
            progress.start(first, config.total_steps, restart)
            progress.resume(first, load_s, str(resumed.path))
            print(f"plan-job train: resumed from {resumed.path} (step {first})")
            resumed = None  # its CPU copy of the whole state would live as long as the run
        step, reason = run.loop(first)
        progress.stop(step, reason, stop.signal if reason == "signal" else None)
    print(f"plan-job train: stopped at step {step}/{config.total_steps} ({reason})")
    return EXIT_OK


def newest_readable(folder: Path) -> Resumed | None:
    """The newest checkpoint that loads; unreadable ones (torn by a kill, a full disk) are
    renamed to ``*.bad`` so that they neither shadow nor outlive the checkpoints after them."""
    from jobs import checkpoint

    for step, path in checkpoint.list_checkpoints(folder):
        start = time.perf_counter()
        try:
            state = checkpoint.read_state(path, "cpu")
            if state.get("step") != step:
                raise ValueError(f"it holds step {state.get('step')!r}, its name says {step}")
        except Exception as exc:  # a torn file fails in torch.load's many ways
            bad = path.with_name(path.name + ".bad")
            print(
                f"plan-job train: warning: cannot load {path} ({type(exc).__name__}: {exc}); "
                f"renamed it to {bad.name}, trying the next older checkpoint",
                file=sys.stderr,
            )
            path.replace(bad)
            continue
        return Resumed(step, path, state, time.perf_counter() - start)
    return None


def _workload_config(config: TrainConfig, device: Any) -> WorkloadConfig:
    return WorkloadConfig(
        preset=config.preset,
        overrides=dict(config.overrides),
        micro_batch=config.micro_batch,
        grad_accum=config.grad_accum,
        precision=config.precision,
        device=str(device),
        seed=config.seed,
    )


class Run:
    """The step loop of one job, with what it knows about how long steps and saves take."""

    def __init__(
        self,
        config: TrainConfig,
        workload: Workload,
        device: Any,
        progress: ProgressWriter,
        stop: StopRequest,
        stop_at: float | None,
        history: list[dict[str, Any]],
    ) -> None:
        import torch

        self.config, self.workload, self.device = config, workload, device
        self.progress, self.stop, self.stop_at = progress, stop, stop_at
        self.sync = runtime.synchronizer(device, torch)
        self.folder = Path(config.checkpoint_dir)
        self.saved_step = 0  # a fresh build is step 0: nothing to save there
        # Until this job has timed its own, the previous jobs' times are the best guess.
        past_steps = [e["step_s"] for e in history if e["event"] == "step"]
        self.step_times = collections.deque(past_steps[-RECENT_STEPS:], maxlen=RECENT_STEPS)
        past_saves = [e["save_s"] for e in history if e["event"] == "checkpoint"]
        self.save_s: float | None = past_saves[-1] if past_saves else None

    def restore(self, resumed: Resumed) -> float:
        """Apply the checkpoint; returns the seconds reading and applying it took."""
        from jobs import checkpoint

        start = time.perf_counter()
        try:
            checkpoint.apply_state(self.workload, resumed.state)
            checkpoint.set_global_rng_state(resumed.state["rng"], self.device)
        except Exception as exc:
            raise CalibrationFailed(
                "checkpoint",
                f"{resumed.path} does not fit the workload (was the run's config changed?): "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        self.sync()
        self.saved_step = resumed.step
        return resumed.read_s + time.perf_counter() - start

    def loop(self, step: int) -> tuple[int, str]:
        """Train from ``step``; returns the step stopped at, saved unless it is 0, and why."""
        config, counts = self.config, self.workload.counts
        reason = "done"
        while step < config.total_steps:
            if self.stop.signal is not None:
                reason = "signal"
                break
            if self._out_of_time():
                reason = "time_limit"
                break
            step_s, loss = self._step(step + 1)
            step += 1
            self.step_times.append(step_s)
            if step % config.log_every == 0 or step == config.total_steps:
                samples = step * counts.samples_per_step
                tokens = step * counts.tokens_per_step
                self.progress.step(step, samples, tokens, step_s, loss)
            if step % config.checkpoint_interval_steps == 0 or step == config.total_steps:
                self.save(step)
        if self.saved_step != step:
            self.save(step)
        return step, reason

    def _out_of_time(self) -> bool:
        if self.stop_at is None:
            return False
        if self.save_s is None:
            self.save_s = self._probe_save()
        needed = max(self.step_times, default=0.0) + self.save_s + self.config.stop_lead_s
        return time.time() + needed > self.stop_at

    def _probe_save(self) -> float:
        """Time one real save, then delete it: the stop decision needs the save time before
        this job has saved anything."""
        from jobs import checkpoint

        path = self.folder / "probe.pt"
        try:
            self.sync()
            start = time.perf_counter()
            checkpoint.save_atomic(self._state(self.saved_step), path)
            return time.perf_counter() - start
        finally:
            path.unlink(missing_ok=True)

    def _step(self, number: int) -> tuple[float, float | None]:
        import torch

        start = time.perf_counter()
        try:
            loss = self.workload.train_step(self.workload.next_batch())
            self.sync()
            step_s = time.perf_counter() - start
            value = float(loss)
        except torch.cuda.OutOfMemoryError as exc:
            config = self.config
            failure = runtime.oom_failure(config.micro_batch, config.precision, self.device, exc)
            raise failure from exc
        except Exception as exc:
            raise CalibrationFailed(
                "workload_error",
                f"training step {number} raised {type(exc).__name__}: {exc}{runtime.where(exc)}",
            ) from exc
        return step_s, value if math.isfinite(value) else None  # JSON has no NaN

    def save(self, step: int) -> None:
        from jobs import checkpoint

        path = checkpoint.checkpoint_path(self.folder, step)
        self.sync()
        start = time.perf_counter()
        nbytes = checkpoint.save_atomic(self._state(step), path)
        self.save_s = time.perf_counter() - start
        self.saved_step = step
        self.progress.checkpoint(step, self.save_s, str(path), nbytes)
        checkpoint.prune(self.folder, self.config.keep_checkpoints)

    def _state(self, step: int) -> dict[str, Any]:
        from jobs import checkpoint

        return checkpoint.workload_state(
            self.workload,
            format=CHECKPOINT_FORMAT,
            step=step,
            rng=checkpoint.global_rng_state(self.device),
            train_config=self.config.to_json(),
        )


if __name__ == "__main__":
    sys.exit(main())
