"""A Lightning run that plan-job can calibrate, plan and run to the end: a tiny MLP regressor on
synthetic data, on CPU, a few ms per step, with plan-job's callback (jobs.lightning_callback),
which writes the progress lines, saves every interval and saves and stops on plan-job's signal
or stop time. The spec (examples/user-lightning.yaml) runs it as::

    command:
      run: >-
        python examples/user_train_lightning.py --total-steps {total_steps}
        --checkpoint-dir {checkpoint_dir} --checkpoint-every {checkpoint_interval_steps}
        --resume-from {resume_from}
      report: progress

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

INPUTS = 32
SAMPLES = 4096


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(f"PLANJOB_{name}", "").strip()
    return int(text) if text else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-steps", type=int, default=_env_int("TOTAL_STEPS", 200))
    parser.add_argument(
        "--checkpoint-dir", default=env("PLANJOB_CHECKPOINT_DIR") or "checkpoints/user-lightning"
    )
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
    return parser.parse_args(argv)


def reporter(args: argparse.Namespace) -> Reporter:
    """The job's Reporter; the PLANJOB_* environment wins over the flags."""
    return Reporter(
        total_steps=args.total_steps,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_interval_steps=args.checkpoint_every,
        resume_from=args.resume_from or None,
        eval_interval_steps=args.eval_every,
    )


def build(args: argparse.Namespace, rep: Reporter, callbacks: list[Any]) -> tuple[Any, Any, Any]:
    """(trainer, model, data) for ``args``: ``trainer.fit(model, data, ckpt_path=...)``."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    import torch

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(INPUTS, args.hidden),
                torch.nn.GELU(),
                torch.nn.Linear(args.hidden, 1),
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if args.sleep_ms:
                time.sleep(args.sleep_ms / 1000)
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    pl.seed_everything(args.seed, verbose=False)
    evaluate = rep.eval_interval_steps > 0
    trainer = pl.Trainer(
        max_steps=rep.total_steps or args.total_steps,
        max_epochs=-1,  # the step count ends the run, not the data
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=args.grad_accum,
        logger=False,
        enable_checkpointing=False,  # the callback saves, where plan-job looks
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # Lightning counts the interval in micro-batches, plan-job in optimizer steps.
        val_check_interval=rep.eval_interval_steps * args.grad_accum if evaluate else None,
        check_val_every_n_epoch=None if evaluate else 1,
        limit_val_batches=4 if evaluate else 0,
        callbacks=callbacks,
    )
    train = _loader(SAMPLES, args.seed, args.micro_batch, shuffle=True)
    val = _loader(256, args.seed + 7919, args.micro_batch, shuffle=False) if evaluate else None
    return trainer, Regressor(), (train, val)


def _loader(size: int, seed: int, batch: int, shuffle: bool) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    # Scaled so that the target has unit variance: the loss starts near 1.
    weights = torch.randn(INPUTS, generator=torch.Generator().manual_seed(1)) / INPUTS**0.5
    x = torch.randn(size, INPUTS, generator=generator)
    y = x @ weights + 0.1 * torch.randn(size, generator=generator)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=batch,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before importing torch and Lightning (seconds): from here on a stop signal sets a flag
    # instead of killing the job.
    rep = reporter(args)
    from jobs.lightning_callback import PlanJobCallback

    trainer, model, (train, val) = build(args, rep, [PlanJobCallback(rep)])
    trainer.fit(model, train, val, ckpt_path=rep.resume_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
