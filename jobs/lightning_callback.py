"""plan-job's progress lines from a Lightning Trainer: add one callback.

    from jobs.lightning_callback import PlanJobCallback
    from jobs.report import Reporter

    rep = Reporter()  # first thing: from here on a stop signal is kept, not fatal
    trainer = Trainer(max_steps=rep.total_steps, callbacks=[PlanJobCallback(rep)], ...)
    trainer.fit(model, data, ckpt_path=rep.resume_from)

The callback writes the start/resume/step/eval/checkpoint/stop lines (jobs.progress). It saves
with ``trainer.save_checkpoint`` every ``checkpoint_interval_steps``, at ``total_steps``, and,
on a stop signal or when the next step and its save would pass ``stop_at``, before it sets
``trainer.should_stop``. Checkpoints go to ``checkpoint_dir/step-000001234.ckpt``, atomically
(temp file, fsync, rename): a later job resumes from the newest with ``ckpt_path``. Its
``keep`` newest are kept.

Lightning restores a checkpoint before any callback hears of it: a resume's ``load_s`` is the
time from the ``setup`` hook to the start of training, an upper bound. On SIGTERM Lightning
itself ends ``fit`` with ``SIGTERMException`` (a ``SystemExit``) after the callback has saved;
the stop line is written then. Importing this module does not need Lightning; using the
callback does, and says so.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from jobs.report import Reporter

_MISSING: ImportError | None = None
try:  # the unified package first, then the standalone one
    from lightning.pytorch import Callback as _Base  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    try:
        from pytorch_lightning import Callback as _Base
    except ImportError as exc:
        _Base = object  # type: ignore[assignment,misc,unused-ignore]
        _MISSING = exc

CHECKPOINT_NAME = "step-{step:09d}.ckpt"
CHECKPOINT_GLOB = "step-*.ckpt"


class PlanJobCallback(_Base):  # type: ignore[misc,valid-type,unused-ignore]
    """A Lightning ``Callback`` that reports through a ``jobs.report.Reporter`` (default:
    ``Reporter()``, from the ``PLANJOB_*`` environment) and saves and stops as it says."""

    def __init__(self, reporter: Reporter | None = None, *, keep: int = 2) -> None:
        if _MISSING is not None:
            raise ImportError(
                "jobs.lightning_callback.PlanJobCallback needs Lightning "
                "(pip install lightning, or pytorch-lightning)"
            ) from _MISSING
        if keep < 1:
            raise ValueError(f"PlanJobCallback: keep must be >= 1, got {keep!r}")
        super().__init__()
        self.reporter = reporter if reporter is not None else Reporter()
        self.keep = keep
        self._setup = time.perf_counter()
        self._started = False
        self._last_step = 0
        self._saved_step = 0
        # The micro-batches' losses since the last optimizer step: Lightning hands each one
        # divided by accumulate_grad_batches, so their sum is the step's mean.
        self._loss: float | None = None
        self._eval_began: float | None = None

    # --- Lightning's hooks ------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._setup = time.perf_counter()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        rep = self.reporter
        if rep.total_steps is None and trainer.max_steps > 0:
            rep.total_steps = trainer.max_steps
        step = int(trainer.global_step)
        params = sum(p.numel() for p in pl_module.parameters())
        rep.start(step, params=params, samples_per_step=_samples_per_step(trainer))
        path = getattr(trainer, "ckpt_path", None) or rep.resume_from
        if step > 0 and path:
            rep.resumed(step, time.perf_counter() - self._setup, str(path))
        self._last_step = self._saved_step = step
        self._started = True

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _loss_of(outputs)  # float(): also waits for the device, so step_s is real
        if loss is not None:
            self._loss = loss + (self._loss or 0.0)
        step = int(trainer.global_step)
        if step == self._last_step:
            return  # a micro-batch of a step still accumulating
        self._last_step = step
        rep = self.reporter
        rep.step(step, loss=self._loss)
        self._loss = None
        total = rep.total_steps
        stop = (total is not None and step >= total) or rep.should_stop(step + 1)
        # Every rank must save and stop at the same step: a signal reaches them at different
        # instants. One small all-reduce per step; a no-op on one device.
        stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop or rep.checkpoint_due(step):
            self._save(trainer, step)
        if stop:
            trainer.should_stop = True

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_began = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._started or trainer.sanity_checking or self._eval_began is None:
            return
        metrics = trainer.callback_metrics
        loss = metrics.get("val_loss")
        eval_s = time.perf_counter() - self._eval_began
        self.reporter.eval(int(trainer.global_step), eval_s, None if loss is None else float(loss))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._started:
            return
        step = int(trainer.global_step)
        if step != self._saved_step:
            self._save(trainer, step)  # e.g. max_epochs ended it between intervals
        total = self.reporter.total_steps
        self.reporter.stop(step, "done" if total is not None and step >= total else None)
        self._started = False

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        rep = self.reporter
        saved = self._started and self._saved_step == int(trainer.global_step)
        if saved and (rep.signal is not None or rep.out_of_time):
            rep.stop(self._saved_step)  # Lightning's own SIGTERM exit, after we saved
        rep.close()  # else a crash: no stop line, as the progress format says
        self._started = False

    # --- internals --------------------------------------------------------------------------

    def _save(self, trainer: Any, step: int) -> None:
        folder = Path(self.reporter.checkpoint_dir or trainer.default_root_dir)
        path = folder / CHECKPOINT_NAME.format(step=step)
        tmp = path.with_name(f".{path.name}.tmp")
        began = time.perf_counter()
        trainer.save_checkpoint(tmp)  # every rank: the strategy decides who writes
        if trainer.is_global_zero:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)  # the path a later job resumes from is always complete
            _prune(folder, self.keep)
        self.reporter.checkpoint(step, time.perf_counter() - began, path)
        self._saved_step = step


def _samples_per_step(trainer: Any) -> int | None:
    """One device's samples per optimizer step, when the train loader says its batch size
    (else the Reporter falls back to plan-job's micro_batch x grad_accum)."""
    batch = getattr(getattr(trainer, "train_dataloader", None), "batch_size", None)
    accumulate = getattr(trainer, "accumulate_grad_batches", 1)
    return batch * accumulate if isinstance(batch, int) and isinstance(accumulate, int) else None


def _loss_of(outputs: Any) -> float | None:
    value = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _prune(folder: Path, keep: int) -> None:
    # The names carry the step zero-padded, so their order is the steps'.
    for old in sorted(folder.glob(CHECKPOINT_GLOB))[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
