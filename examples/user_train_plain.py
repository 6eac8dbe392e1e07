"""A plain PyTorch training loop that plan-job can calibrate, plan and run to the end: a small
MLP on synthetic regression data, reporting through jobs.report. CPU, a few ms per step.

The spec (examples/user-plain.yaml) runs it as::

    command:
      run: >-
        python examples/user_train_plain.py --total-steps {total_steps}
        --checkpoint-dir {checkpoint_dir} --checkpoint-every {checkpoint_interval_steps}
        --resume-from {resume_from}
      report: progress

Standalone: ``python examples/user_train_plain.py --total-steps 200`` (no progress lines
unless ``PLANJOB_PROGRESS_PATH`` is set). Every flag defaults to its ``PLANJOB_*`` variable,
which plan-job sets to the same values it puts in the command line.

It saves model, optimizer and step every ``--checkpoint-every`` steps (atomically: temp file,
fsync, rename), resumes from ``--resume-from``, and on SIGUSR2/SIGTERM, or when the next step
and its save would pass ``$PLANJOB_STOP_AT``, saves and exits 0. Each step's batch comes from a
generator seeded with (seed, step), so a resumed run trains on the same data as an
uninterrupted one and, on CPU, ends with the same weights. ``--sleep-ms`` paces the steps (for
tests); ``--hidden`` sizes the model and so the step time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.report import Reporter

if TYPE_CHECKING:
    import torch

INPUTS = 32
EVAL_BATCHES = 4
KEEP = 2  # checkpoints kept


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(f"PLANJOB_{name}", "").strip()
    return int(text) if text else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-steps", type=int, default=_env_int("TOTAL_STEPS", 200))
    parser.add_argument(
        "--checkpoint-dir", default=env("PLANJOB_CHECKPOINT_DIR") or "checkpoints/user-plain"
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before importing torch (seconds on a cold node): from here on a stop signal sets a flag
    # instead of killing the job. The PLANJOB_* environment wins over these arguments.
    rep = Reporter(
        total_steps=args.total_steps,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_interval_steps=args.checkpoint_every,
        resume_from=args.resume_from or None,
        eval_interval_steps=args.eval_every,
    )
    import torch

    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(INPUTS, args.hidden), torch.nn.GELU(), torch.nn.Linear(args.hidden, 1)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # Scaled so that the target has unit variance: the loss starts near 1.
    true_w = torch.randn(INPUTS, 1, generator=torch.Generator().manual_seed(args.seed + 1))
    true_w /= INPUTS**0.5
    total, folder = rep.total_steps or 0, Path(rep.checkpoint_dir or "checkpoints/user-plain")

    step, load_s = 0, 0.0
    if rep.resume_from:
        began = time.perf_counter()
        state = torch.load(rep.resume_from, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, load_s = int(state["step"]), time.perf_counter() - began
    params = sum(p.numel() for p in model.parameters())
    per_step = args.micro_batch * args.grad_accum
    # 6 FLOPs per parameter per sample: forward 2, backward 4 (the weights dominate).
    rep.start(
        step, params=params, samples_per_step=per_step, flops_per_step=6.0 * params * per_step
    )
    if rep.resume_from:
        rep.resumed(step, load_s, rep.resume_from)

    def save(at: int) -> None:
        path = folder / f"step-{at:09d}.pt"
        with rep.saving(at, path):
            _save_atomic(
                {"step": at, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, path
            )
        for old in sorted(folder.glob("step-*.pt"))[:-KEEP]:
            old.unlink(missing_ok=True)

    saved = step
    while step < total:
        if rep.should_stop(step + 1):
            break
        loss = _train_step(model, optimizer, args, step + 1, true_w)
        if args.sleep_ms:
            time.sleep(args.sleep_ms / 1000)
        step += 1
        rep.step(step, loss=loss)
        if rep.eval_due(step):
            with rep.evaluating(step) as evaluation:
                evaluation.loss = _evaluate(model, args, true_w)
        if rep.checkpoint_due(step):
            save(step)
            saved = step
    if saved != step:
        save(step)  # every way out leaves a checkpoint of the last step
    rep.stop(step)
    return 0


def _batch(
    seed: int, step: int, micro: int, size: int, true_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    # Seeded by (seed, step, micro-batch), not by a running generator: a resumed run draws
    # exactly the batches the uninterrupted one would.
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + micro)
    x = torch.randn(size, INPUTS, generator=generator)
    y = x @ true_w + 0.1 * torch.randn(size, 1, generator=generator)
    return x, y


def _train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    args: argparse.Namespace,
    step: int,
    true_w: torch.Tensor,
) -> float:
    import torch

    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(args.grad_accum):
        x, y = _batch(args.seed, step, micro, args.micro_batch, true_w)
        loss = torch.nn.functional.mse_loss(model(x), y) / args.grad_accum
        loss.backward()
        total += loss.item()
    optimizer.step()
    return total


def _evaluate(model: torch.nn.Module, args: argparse.Namespace, true_w: torch.Tensor) -> float:
    import torch

    with torch.no_grad():
        losses = [
            float(torch.nn.functional.mse_loss(model(x), y))
            for x, y in (
                _batch(args.seed + 7919, 0, i, args.micro_batch, true_w)
                for i in range(EVAL_BATCHES)
            )
        ]
    return sum(losses) / len(losses)


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    """``path`` is either absent or complete: the next job resumes from it."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
