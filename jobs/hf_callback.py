"""plan-job's progress lines from a Hugging Face Trainer: add one callback.

    from jobs.hf_callback import PlanJobCallback, trainer_arguments
    from jobs.report import Reporter

    rep = Reporter()  # first thing: from here on a stop signal is kept, not fatal
    args = TrainingArguments(**trainer_arguments(rep), logging_steps=1, ...)
    trainer = Trainer(model, args, ..., callbacks=[PlanJobCallback(rep)])
    trainer.train(resume_from_checkpoint=rep.resume_from)

The callback writes the start/resume/step/eval/checkpoint/stop lines (jobs.progress), saves
every ``checkpoint_interval_steps`` and at ``total_steps``, and on a stop signal, or when the
next step and its save would pass ``stop_at``, saves and ends training (``should_save`` and
``should_training_stop``). Checkpoints are the Trainer's own ``output_dir/checkpoint-N``
folders, which is what a later job resumes from.

A step's loss is the one the Trainer logs at that step (the mean since its previous log), so
``logging_steps=1`` gives every step line a loss; the lines of steps without a log have none.
The Trainer loads a checkpoint before any callback hears of it: a resume's ``load_s`` is the
time from the Trainer's construction to the start of training, an upper bound.

Importing this module does not need transformers; using the callback does, and says so.
"""

from __future__ import annotations

import os
import time
from typing import Any

from jobs.report import Reporter

try:
    from transformers import TrainerCallback as _Base
except ImportError as exc:  # the module stays importable; the class says what is missing
    _Base = object  # type: ignore[assignment,misc,unused-ignore]
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


class PlanJobCallback(_Base):  # type: ignore[misc,valid-type,unused-ignore]
    """A ``transformers.TrainerCallback`` that reports through a ``jobs.report.Reporter``
    (default: ``Reporter()``, from the ``PLANJOB_*`` environment)."""

    def __init__(self, reporter: Reporter | None = None) -> None:
        if _MISSING is not None:
            raise ImportError(
                "jobs.hf_callback.PlanJobCallback needs Hugging Face transformers "
                "(pip install transformers accelerate)"
            ) from _MISSING
        super().__init__()
        self.reporter = reporter if reporter is not None else Reporter()
        self._built = time.perf_counter()  # moved to the Trainer's construction when we see it
        self._started = False
        # A step whose line waits for its loss: the Trainer logs after on_step_end.
        self._pending: tuple[int, float] | None = None
        # When the last step, training log or evaluation ended: where a save's time begins.
        self._since = time.perf_counter()

    # --- the Trainer's events ---------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._built = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rep = self.reporter
        if rep.total_steps is None and state.max_steps > 0:
            rep.total_steps = state.max_steps
        step = int(state.global_step)
        model = kwargs.get("model")
        params = sum(p.numel() for p in model.parameters()) if model is not None else None
        per_device = args.per_device_train_batch_size * args.gradient_accumulation_steps
        rep.start(step, params=params, samples_per_step=per_device)
        if step > 0:  # the Trainer restored a checkpoint's state before telling us
            path = rep.resume_from or os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}-{step}")
            rep.resumed(step, time.perf_counter() - self._built, path)
        self._started = True
        self._since = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._started:
            return
        self._flush(state, control)  # a step whose log never came
        self._pending = (int(state.global_step), self.reporter.lap())
        self._since = time.perf_counter()
        # The flow callback ran before us: should_log says whether this step's loss is coming.
        if not control.should_log:
            self._flush(state, control)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        # Only the training log carries "loss"; an evaluation's log comes inside it, and must
        # not move the mark its time is taken from.
        if self._started and logs and "loss" in logs:
            self._since = time.perf_counter()
            self._flush(state, control, loss=logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._started:
            return
        self._flush(state, control)
        metrics = kwargs.get("metrics") or {}
        now = time.perf_counter()
        eval_s, self._since = now - self._since, now
        self.reporter.eval(int(state.global_step), eval_s, metrics.get("eval_loss"))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._started:
            return
        self._flush(state, control, saving=True)
        now = time.perf_counter()
        save_s, self._since = now - self._since, now
        step = int(state.global_step)
        path = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}-{step}")
        self.reporter.checkpoint(step, save_s, path)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._started:
            return
        self._flush(state, control, saving=True)
        step = int(state.global_step)
        target = self.reporter.total_steps or state.max_steps
        self.reporter.stop(step, "done" if step >= target else None)
        self._started = False

    # --- internals --------------------------------------------------------------------------

    def _flush(
        self, state: Any, control: Any, loss: float | None = None, saving: bool = False
    ) -> None:
        """Write the pending step's line, then decide on a save and a stop after it. The
        decision waits for the line so that it knows this step's time; the Trainer saves and
        stops after its logging, so a decision made in on_log is still in time."""
        if self._pending is None:
            return
        step, step_s = self._pending
        self._pending = None
        rep = self.reporter
        rep.step(step, loss=loss, step_s=step_s)
        if step != int(state.global_step):
            return  # a late line: the decisions were for an earlier step
        total = rep.total_steps
        stop = (total is not None and step >= total) or rep.should_stop(step + 1)
        # While saving (on_save) the save under way is this step's: asking for another would
        # carry over to the epoch's end.
        if not saving and (stop or rep.checkpoint_due(step)):
            control.should_save = True
        if stop:
            control.should_training_stop = True


def trainer_arguments(reporter: Reporter | None = None) -> dict[str, Any]:
    """``TrainingArguments`` keywords from what plan-job gives the job: output_dir
    (command.output_dir, else the checkpoint folder), max_steps, the save and evaluation
    intervals, batch and seed, each only where known. The resume path is ``train()``'s:
    ``trainer.train(resume_from_checkpoint=rep.resume_from)``."""
    rep = reporter if reporter is not None else Reporter(handle_signals=False)
    kwargs: dict[str, Any] = {}
    output_dir = rep.output_dir or rep.checkpoint_dir
    if output_dir:
        kwargs["output_dir"] = output_dir
    if rep.total_steps is not None:
        kwargs["max_steps"] = rep.total_steps
    if rep.checkpoint_interval_steps is not None:
        kwargs.update(save_strategy="steps", save_steps=rep.checkpoint_interval_steps)
    if rep.eval_interval_steps:
        kwargs.update(eval_strategy="steps", eval_steps=rep.eval_interval_steps)
    if rep.micro_batch is not None:
        kwargs["per_device_train_batch_size"] = rep.micro_batch
    if rep.grad_accum is not None:
        kwargs["gradient_accumulation_steps"] = rep.grad_accum
    if rep.seed is not None:
        kwargs["seed"] = rep.seed
    return kwargs
