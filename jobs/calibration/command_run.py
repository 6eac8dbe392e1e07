"""Running a user's command for its calibration: start it, watch its reports until the
steady step time is known (or a cap is reached, or it exits), stop it (its stop signal, a
grace, SIGKILL to its group) on every way out, and say what went wrong when it gave too
little. Standard library only.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobs.calibration.command_reports import Seen, Tail, Timing, steady_ci, step_timing
from jobs.calibration.steps import LiveProgress
from jobs.contract.failure import NodeError
from jobs.contract.measurement import CalibrationRequest
from jobs.node import process
from jobs.progress import ProgressWriter
from jobs.training.trainer_relay import TrainerStateRelay

POLL_S = 0.2
TAIL_LINES = 20  # of the command's output, in a failure's message
# The grace after Ctrl-C or the job's time limit: the job is ending, a save is not wanted.
ABORT_GRACE_S = 2.0
_OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "HIP out of memory")


class CommandRun:
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

    def run(self, fields_env: dict[str, str]) -> tuple[Seen, Timing, str]:
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
        seen, tail, relay, writer = Seen(), Tail(self.progress_path), None, None
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
            grace = request.work.stop_grace_s
            try:
                if self.trainer:
                    writer = ProgressWriter(self.progress_path)
                    writer.start(0, request.max_steps, 0)
                    work = request.work
                    samples = work.micro_batch * work.grad_accum
                    relay = TrainerStateRelay(work.output_dir, writer, 0, self.spawned, samples)
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
        timing = step_timing(seen, self.trainer)
        if len(timing.times) < 2:
            raise self._too_few(seen, status, exited=stopped_by == "exited")
        return seen, timing, stopped_by

    def _watch(
        self,
        proc: subprocess.Popen[bytes],
        seen: Seen,
        tail: Tail,
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
            timing = step_timing(seen, self.trainer)
            if new and len(timing.times) >= 2:
                ci = steady_ci(timing, request.min_steps, self.trainer)
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

    def _after_exit(self, seen: Seen, status: int) -> str:
        """stopped_by for a command that exited by itself; NodeError when it did so
        before the calibration had enough steps."""
        request = self.request
        if seen.steps_done >= request.max_steps:
            return "step_cap"
        timing = step_timing(seen, self.trainer)
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

    def _too_few(self, seen: Seen, status: int, exited: bool) -> NodeError:
        request = self.request
        tail = _log_tail(self.log_path)
        if status != 0 and exited:
            if any(marker in tail for marker in _OOM_MARKERS):
                return NodeError(
                    "oom",
                    f"CUDA out of memory in the command at micro-batch {request.work.micro_batch} "
                    f"(precision {request.work.precision}); lower batch.micro_batch and raise "
                    f"grad_accum (the command gets them as {{micro_batch}} and {{grad_accum}}); "
                    f"log {self.log_path}:\n{tail}",
                    micro_batch=request.work.micro_batch,
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
                f"{request.work.output_dir}: give the Trainer output_dir={{output_dir}}, "
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
