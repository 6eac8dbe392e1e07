"""A Hugging Face Trainer run that plan-job can calibrate, plan and run to the end: a tiny MLP
regressor (an ``nn.Module`` returning ``{"loss": ...}``, nothing downloaded) on synthetic
data, on CPU, a few ms per step.

With plan-job's callback (examples/user-hf.yaml), which writes the progress lines and saves
and stops on plan-job's signal or stop time::

    command:
      run: >-
        python examples/user_train_hf.py --output-dir {checkpoint_dir}
        --total-steps {total_steps} --checkpoint-every {checkpoint_interval_steps}
        --resume-from {resume_from}
      report: progress

Unchanged, as any Trainer script (examples/user-hf-trainer-state.yaml): plan-job reads the
pace from the ``checkpoint-N/trainer_state.json`` folders the Trainer writes::

    command:
      run: >-
        python examples/user_train_hf.py --no-callback --output-dir {output_dir}
        --total-steps {total_steps} --checkpoint-every {checkpoint_interval_steps}
        --resume-from {resume_from}
      report: trainer_state
      output_dir: out/user-hf

Every flag defaults to its ``PLANJOB_*`` variable. ``--sleep-ms`` paces the steps (tests).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from jobs.report import Reporter

if TYPE_CHECKING:
    import torch
    from transformers import Trainer, TrainerCallback

INPUTS = 32
SAMPLES = 4096


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(f"PLANJOB_{name}", "").strip()
    return int(text) if text else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir",
        default=env("PLANJOB_OUTPUT_DIR") or env("PLANJOB_CHECKPOINT_DIR") or "out/user-hf",
        help="the Trainer's output_dir: its checkpoint-N folders go here",
    )
    parser.add_argument("--total-steps", type=int, default=_env_int("TOTAL_STEPS", 200))
    parser.add_argument(
        "--checkpoint-every", type=int, default=_env_int("CHECKPOINT_INTERVAL_STEPS", 50)
    )
    parser.add_argument(
        "--resume-from", default=env("PLANJOB_RESUME_FROM", ""), help="'' for a fresh start"
    )
    parser.add_argument("--eval-every", type=int, default=_env_int("EVAL_INTERVAL_STEPS", 0))
    parser.add_argument("--micro-batch", type=int, default=_env_int("MICRO_BATCH", 16))
    parser.add_argument("--grad-accum", type=int, default=_env_int("GRAD_ACCUM", 1))
    parser.add_argument("--seed", type=int, default=_env_int("SEED", 0))
    parser.add_argument("--hidden", type=int, default=64, help="MLP width (sets the step time)")
    parser.add_argument("--sleep-ms", type=float, default=0.0, help="extra time in each step")
    parser.add_argument(
        "--no-callback",
        action="store_true",
        help="run the Trainer unchanged (plan-job's report: trainer_state)",
    )
    return parser.parse_args(argv)


def build_trainer(args: argparse.Namespace, callbacks: list[TrainerCallback]) -> Trainer:
    """The Trainer for ``args``; its steps, saves and evaluations follow the arguments."""
    import torch
    from transformers import Trainer, TrainingArguments

    class Regressor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(INPUTS, args.hidden),
                torch.nn.GELU(),
                torch.nn.Linear(args.hidden, 1),
            )

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
            if self.training and args.sleep_ms:
                time.sleep(args.sleep_ms / 1000)
            prediction = self.net(x).squeeze(-1)
            out: dict[str, Any] = {"logits": prediction}
            if labels is not None:
                out["loss"] = torch.nn.functional.mse_loss(prediction, labels)
            return out

    torch.manual_seed(args.seed)
    evaluate = args.eval_every > 0
    training = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.total_steps,
        per_device_train_batch_size=args.micro_batch,
        per_device_eval_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=1e-2,
        lr_scheduler_type="constant",  # the schedule does not depend on where a job stops
        logging_steps=1,  # a loss on every step line
        save_strategy="steps",
        save_steps=args.checkpoint_every,
        save_total_limit=2,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=args.eval_every if evaluate else None,
        seed=args.seed,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    return Trainer(
        model=Regressor(),
        args=training,
        train_dataset=_Synthetic(SAMPLES, args.seed),
        eval_dataset=_Synthetic(256, args.seed + 7919) if evaluate else None,
        callbacks=callbacks,
    )


class _Synthetic:
    """A map-style data set of {"x", "labels"} pairs: y = x . w + noise."""

    def __init__(self, size: int, seed: int) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        # Scaled so that the target has unit variance: the loss starts near 1.
        weights = torch.randn(INPUTS, generator=torch.Generator().manual_seed(1)) / INPUTS**0.5
        self.x = torch.randn(size, INPUTS, generator=generator)
        self.y = self.x @ weights + 0.1 * torch.randn(size, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "labels": self.y[index]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    callbacks: list[Any] = []
    resume_from = args.resume_from or None
    if not args.no_callback:
        # Before importing torch and transformers (seconds): from here on a stop signal sets
        # a flag instead of killing the job. The PLANJOB_* environment wins over the flags.
        rep = Reporter(
            total_steps=args.total_steps,
            checkpoint_dir=args.output_dir,
            checkpoint_interval_steps=args.checkpoint_every,
            resume_from=resume_from,
            eval_interval_steps=args.eval_every,
        )
        from jobs.hf_callback import PlanJobCallback

        callbacks.append(PlanJobCallback(rep))
        resume_from = rep.resume_from
    trainer = build_trainer(args, callbacks)
    trainer.train(resume_from_checkpoint=resume_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
