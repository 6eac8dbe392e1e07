"""Report a training script's progress to plan-job: a few lines in your own loop.

Standard library only, so that it costs a script nothing to import, and torch is never
imported here (a script that does not use it does not pay for it)::

    from jobs.report import Reporter

    rep = Reporter(total_steps=1000, checkpoint_dir="ck", checkpoint_interval_steps=100)
    step, load_s = 0, 0.0
    if rep.resume_from:
        began = time.perf_counter()
        step = load(rep.resume_from)  # your model, optimizer and step
        load_s = time.perf_counter() - began
    rep.start(step)
    if rep.resume_from:
        rep.resumed(step, load_s, rep.resume_from)
    saved = step
    while step < rep.total_steps and not rep.should_stop():
        loss = train_one_step()
        step += 1
        rep.step(step, loss=loss)
        if rep.checkpoint_due(step):
            path = f"{rep.checkpoint_dir}/step-{step}.pt"
            with rep.saving(step, path):
                save(path)  # atomically: the path is what the next job resumes from
            saved = step
    if saved != step:
        ...  # save as above: every way out leaves a checkpoint of the last step
    rep.stop(step)

The values plan-job gives a job come from the ``PLANJOB_<NAME>`` environment
(jobs.contract.command_fields); a keyword given to Reporter is the default for a value the
environment lacks, so the same script runs standalone (with no ``PLANJOB_PROGRESS_PATH`` it
writes nothing) and under plan-job. Lines go to the progress file that jobs.progress
documents; only rank 0 (``$RANK``, else ``$SLURM_PROCID``, else 0) writes them, while every
rank times its work and answers should_stop.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from jobs.contract.command_fields import (
    env_name,
    env_rank,
    int_field,
    optional_text_field,
    stop_at_field,
    text_field,
)
from jobs.node.signals import STOP_SIGNALS, dump_stacks_on_signal
from jobs.progress import ProgressWriter, read_progress, restart_count

RECENT_STEPS = 5  # the next step is assumed to take as long as the slowest of these

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@dataclass
class Evaluation:
    """What ``Reporter.evaluating`` yields: set ``loss`` inside the ``with`` block."""

    loss: float | None = None


class Reporter:
    """The job's values from plan-job, its progress lines, and its stop decision.

    Keyword arguments are defaults for values the ``PLANJOB_*`` environment lacks (an empty
    variable counts as absent, except ``PLANJOB_RESUME_FROM`` and ``PLANJOB_STOP_AT``, where
    plan-job writes '' to mean a fresh start and no known stop time). The attributes are plain
    and may be set before ``start``, e.g. by a callback that learns the Trainer's max_steps.
    """

    def __init__(
        self,
        *,
        total_steps: int | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_interval_steps: int | None = None,
        resume_from: str | None = None,
        eval_interval_steps: int = 0,
        stop_at: float | None = None,
        progress_path: str | None = None,
        stop_margin_s: float = 0.0,
        handle_signals: bool = True,
    ) -> None:
        self.total_steps = int_field("total_steps", total_steps, minimum=1)
        self.checkpoint_dir = text_field("checkpoint_dir", checkpoint_dir)
        interval = int_field("checkpoint_interval_steps", checkpoint_interval_steps, minimum=1)
        self.checkpoint_interval_steps = interval
        self.resume_from = optional_text_field("resume_from", resume_from)
        self.eval_interval_steps = int_field("eval_interval_steps", eval_interval_steps, 0) or 0
        self.stop_at = stop_at_field(stop_at)
        self.progress_path = text_field("progress_path", progress_path)
        self.output_dir = text_field("output_dir", None)
        self.micro_batch = int_field("micro_batch", None, minimum=1)
        self.grad_accum = int_field("grad_accum", None, minimum=1)
        self.global_batch = int_field("global_batch", None, minimum=1)
        self.seed = int_field("seed", None, minimum=None)
        if stop_margin_s < 0:
            raise ValueError(f"Reporter: stop_margin_s must be >= 0, got {stop_margin_s!r}")
        # Seconds kept free before stop_at on top of the measured step and save times: the
        # first save's time is unknown until it happens, and a busy node slows steps down.
        self.stop_margin_s = stop_margin_s
        self.rank = env_rank()

        self.signal: str | None = None  # the name of the stop signal that came, if one did
        self.out_of_time = False  # should_stop said the next step would pass stop_at
        self._previous: dict[int, _Handler] = {}
        self._handling = False
        if handle_signals:
            self._install()

        self._writer: ProgressWriter | None = None
        self._stopped = False
        self._mark = time.perf_counter()  # when the last step, save or evaluation ended
        self._last_step = 0
        self._step_times: collections.deque[float] = collections.deque(maxlen=RECENT_STEPS)
        self._save_s: float | None = None
        self._eval_s: float | None = None
        self._samples_per_step: int | None = None
        self._tokens_per_sample: int | None = None

    # --- what the job was told --------------------------------------------------------------

    @property
    def writes(self) -> bool:
        """Whether this process writes progress lines: rank 0 with a progress path."""
        return self.rank == 0 and bool(self.progress_path)

    def checkpoint_due(self, step: int) -> bool:
        """Whether to save after ``step``: every interval, and at total_steps so that the
        run ends on a checkpoint (a rerun then sees it finished)."""
        if step <= 0:
            return False
        interval = self.checkpoint_interval_steps
        if interval is not None and step % interval == 0:
            return True
        return self.total_steps is not None and step == self.total_steps

    def eval_due(self, step: int) -> bool:
        interval = self.eval_interval_steps
        return interval > 0 and step > 0 and step % interval == 0

    # --- the lines --------------------------------------------------------------------------

    def start(
        self,
        step: int,
        *,
        params: int | None = None,
        samples_per_step: int | None = None,
        tokens_per_sample: int | None = None,
        token_unit: str | None = None,
        flops_per_step: float | None = None,
    ) -> None:
        """The job starts at ``step`` (0 fresh, else the step of the checkpoint it loaded).
        ``samples_per_step`` (one device's; default micro_batch x grad_accum from plan-job)
        and ``tokens_per_sample`` make the step lines' sample and token totals."""
        if samples_per_step is None and self.micro_batch and self.grad_accum:
            samples_per_step = self.micro_batch * self.grad_accum
        self._samples_per_step, self._tokens_per_sample = samples_per_step, tokens_per_sample
        self._last_step = step
        if self.writes:
            if self.total_steps is None:
                raise ValueError(
                    f"Reporter.start: total_steps is unknown; set ${env_name('total_steps')} "
                    "or pass Reporter(total_steps=...): the progress file needs the target"
                )
            path = Path(self.progress_path or "")
            # Counted before this job opens the file: the earlier jobs' starts.
            restart = restart_count(read_progress(path, keep_steps=0))
            self._writer = ProgressWriter(path)
            self._writer.start(
                step,
                self.total_steps,
                restart,
                params=params,
                samples_per_step=samples_per_step,
                tokens_per_sample=tokens_per_sample,
                token_unit=token_unit,
                flops_per_step=flops_per_step,
            )
        self._mark = time.perf_counter()

    def resumed(self, step: int, load_s: float, path: str | os.PathLike[str]) -> None:
        """After ``start``: the job loaded the checkpoint at ``path`` (of ``step``) in
        ``load_s`` seconds."""
        if self._writer is not None:
            self._writer.resume(step, load_s, str(path))
        self._mark = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the last step, save or evaluation ended; restarts that clock. For a
        caller that learns a step's loss later than its end (``step(..., step_s=)``)."""
        now = time.perf_counter()
        elapsed, self._mark = now - self._mark, now
        return elapsed

    def step(
        self,
        step: int,
        loss: float | None = None,
        samples: int | None = None,
        tokens: int | None = None,
        peak_memory_bytes: int | None = None,
        *,
        step_s: float | None = None,
    ) -> None:
        """Optimizer step ``step`` (steps done by the whole run) has ended. Its time runs from
        the end of the previous step, save or evaluation, so that the loop's own work between
        steps is counted, as the planner assumes. ``samples``/``tokens``: totals so far on one
        device (default: step x the per-step counts given to start)."""
        if step_s is None:
            step_s = self.lap()
        self._step_times.append(step_s)
        self._last_step = step
        if self._writer is None:
            return
        if samples is None and self._samples_per_step is not None:
            samples = step * self._samples_per_step
        if tokens is None and samples is not None and self._tokens_per_sample is not None:
            tokens = samples * self._tokens_per_sample
        if peak_memory_bytes is None:
            peak_memory_bytes = _cuda_peak_memory()
        self._writer.step(
            step, samples, tokens, step_s, _finite(loss), peak_memory_bytes=peak_memory_bytes
        )

    @contextlib.contextmanager
    def saving(self, step: int, path: str | os.PathLike[str]) -> Iterator[None]:
        """Time the ``with`` block as the save of ``step`` to ``path`` (a file or a folder),
        then write its line. Nothing is written if the block raises: a line names a
        checkpoint that the next job may resume from."""
        began = time.perf_counter()
        yield
        self.checkpoint(step, time.perf_counter() - began, path)

    def checkpoint(
        self, step: int, save_s: float, path: str | os.PathLike[str], nbytes: int | None = None
    ) -> None:
        """``step`` was saved, completely, to ``path`` in ``save_s`` seconds; ``nbytes``
        defaults to the size of the file, or of every file in the folder."""
        self._save_s = save_s
        if self._writer is not None:
            size = nbytes if nbytes is not None else _size(Path(path))
            self._writer.checkpoint(step, save_s, str(path), size)
        self._mark = time.perf_counter()

    @contextlib.contextmanager
    def evaluating(self, step: int) -> Iterator[Evaluation]:
        """Time the ``with`` block as the evaluation after ``step``; set the yielded
        object's ``loss``."""
        result = Evaluation()
        began = time.perf_counter()
        yield result
        self.eval(step, time.perf_counter() - began, result.loss)

    def eval(self, step: int, eval_s: float, loss: float | None) -> None:
        self._eval_s = eval_s
        if self._writer is not None:
            self._writer.eval(step, eval_s, _finite(loss))
        self._mark = time.perf_counter()

    def should_stop(self, next_step: int | None = None) -> bool:
        """Whether to save and leave now rather than run ``next_step`` (default: the step
        after the last one reported): a stop signal came, or that step (the slowest of the
        last few), the evaluation due after it and the save after that would not be done by
        stop_at. Ranks may disagree (signals do not reach them at one instant): a
        data-parallel script should combine the answers, e.g. with an all_reduce of MAX."""
        if self.signal is not None:
            return True
        if self.stop_at is None:
            return False
        step = self._last_step + 1 if next_step is None else next_step
        needed = max(self._step_times, default=0.0) + (self._save_s or 0.0) + self.stop_margin_s
        if self.eval_due(step):
            needed += self._eval_s or 0.0
        if time.time() + needed > self.stop_at:
            self.out_of_time = True
        return self.out_of_time

    def stop(self, step: int, reason: str | None = None) -> None:
        """The job leaves at ``step``, after saving it. ``reason`` defaults to "done" when
        total_steps is reached, "signal" when a stop signal came, "time_limit" when
        should_stop said time was short, else "done" (the script ended for reasons of its
        own). Writes one line at most, and closes the file."""
        if self._stopped:
            return
        self._stopped = True
        if reason is None:
            reason = self._reason(step)
        if self._writer is not None:
            self._writer.stop(step, reason, self.signal if reason == "signal" else None)
            self.close()
        if self._handling:
            # Interpreter shutdown resets Python-level handlers to the default, which for USR2
            # and TERM is to die: a signal landing while torch tears down would turn a clean
            # stop into exit 140. The work is saved by now; the launcher still has SIGKILL.
            for signum in STOP_SIGNALS:
                with contextlib.suppress(ValueError):
                    signal.signal(signum, signal.SIG_IGN)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------

    def _reason(self, step: int) -> str:
        if self.total_steps is not None and step >= self.total_steps:
            return "done"
        if self.signal is not None:
            return "signal"
        return "time_limit" if self.out_of_time else "done"

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            # Python lets only the main thread set handlers; without them a stop signal kills
            # the job before it saves, so say so rather than fail the run.
            warnings.warn(
                "jobs.report.Reporter: not in the main thread, so SIGUSR2/SIGTERM are not "
                "handled; create the Reporter in the main thread",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        self._handling = True
        # So that plan-job's hang watchdog can show where this script is stuck before it
        # kills it (jobs.training.command).
        dump_stacks_on_signal()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the loop acts on it between steps, never inside one.
        self.signal = signal.Signals(signum).name
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)  # a handler the script set before us keeps working


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)  # also a 0-d tensor's value
    return number if math.isfinite(number) else None  # JSON has no NaN


def _cuda_peak_memory() -> int | None:
    # Only a torch the script already imported, with CUDA already in use: importing torch or
    # initialising CUDA here would cost seconds and memory the script did not ask for.
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_initialized():
            return None
        return int(torch.cuda.max_memory_allocated())
    except Exception:  # a half-imported or CUDA-less build: the figure is optional
        return None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(
            (Path(root) / name).stat().st_size
            for root, _dirs, files in os.walk(path)
            for name in files
            if not (Path(root) / name).is_symlink()
        )
    try:
        return path.stat().st_size
    except FileNotFoundError:
        warnings.warn(
            f"jobs.report: checkpoint {path} does not exist after its save; recorded as 0 bytes",
            RuntimeWarning,
            stacklevel=4,
        )
        return 0
