"""Torch helpers shared by the built-in workloads: config resolution, seeding, precision,
optimizer, the gradient-accumulation train step and the transformer layers both models use."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from jobs.workloads.base import PRECISIONS, StepCounts, Workload, WorkloadConfig

C = TypeVar("C")
MicroBatch = TypeVar("MicroBatch")


def _reject(field: str, value: object, allowed: str) -> None:
    raise ValueError(f"WorkloadConfig.{field}={value!r} is not allowed: {allowed}")


def check_run_config(config: WorkloadConfig) -> None:
    """Fail before building anything if the harness asked for an impossible run."""
    for name in ("micro_batch", "grad_accum"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            _reject(name, value, "must be a positive integer")
    if config.precision not in PRECISIONS:
        _reject("precision", config.precision, f"must be one of {', '.join(PRECISIONS)}")


def resolve_config(workload: str, presets: Mapping[str, C], config: WorkloadConfig) -> C:
    """The preset named by ``config`` with its overrides applied (the config validates itself)."""
    if config.preset not in presets:
        _reject("preset", config.preset, f"{workload} presets are {', '.join(presets)}")
    preset = presets[config.preset]
    known = [f.name for f in dataclasses.fields(preset)]  # type: ignore[arg-type]
    unknown = sorted(set(config.overrides) - set(known))
    if unknown:
        _reject(
            "overrides",
            dict(config.overrides),
            f"unknown {workload} field(s) {', '.join(unknown)}; fields are {', '.join(known)}",
        )
    return dataclasses.replace(preset, **dict(config.overrides))  # type: ignore[type-var]


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that parameter initialisation draws from (CPU and all GPUs)."""
    torch.manual_seed(seed)


def stream_generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """An RNG on ``device`` for one purpose (data, noise), independent of the global RNG, so
    that whatever else the harness does between steps cannot shift the workload's draws."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 16 + stream)
    return generator


# Held-out batches come from their own seeds: far from the training streams (seed * 16 +
# stream, stream < 16) and from the ranks' (jobs.node.data_parallel.rank_seed), one per batch index.
EVAL_STREAM = 15
_EVAL_INDEX_SPAN = 2**20


def eval_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of held-out batch ``index``, seeded afresh for each batch: batch i is the
    same in every evaluation, and there is no evaluation state to checkpoint."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((seed * 16 + EVAL_STREAM) * _EVAL_INDEX_SPAN + index) % 2**63)
    return generator


def make_eval_step(
    model: nn.Module,
    loss_fn: Callable[[Any], torch.Tensor],
    precision: str,
    device: torch.device,
) -> Callable[[Any], torch.Tensor]:
    """Forward-only loss of one held-out batch; the model goes back to the mode it was in."""

    def eval_step(batch: Any) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast(precision, device):
                return loss_fn(batch).detach().float()
        finally:
            model.train(was_training)

    return eval_step


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision keeps fp32 master weights; only the compute runs in bf16/fp16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def adamw(
    model: nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW decaying matrices and embeddings only: decaying biases and norm gains just
    fights the normalisation."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # The fused kernel is CUDA's fastest AdamW; elsewhere the default (foreach) is used.
    fused = True if device.type == "cuda" else None
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused)


def trainable_params(model: nn.Module) -> int:
    # parameters() yields a tied weight once, so the tied LM head is not counted twice.
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class TrainStep:
    """One optimizer step over all micro-batches of a batch: what make_train_step returns.

    ``before_update``, when set, runs once per step between the last micro-batch's backward
    and the update (before unscaling and clipping). The training entry averages gradients
    across data-parallel ranks there, so that workloads stay unaware of distribution.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any], torch.Tensor],
        precision: str,
        device: torch.device,
        grad_clip: float,
    ) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.precision, self.device, self.grad_clip = precision, device, grad_clip
        self.scaler = grad_scaler(precision, device)
        self.before_update: Callable[[], None] | None = None

    def __call__(self, batch: Sequence[Any]) -> torch.Tensor:
        model, optimizer, scaler = self.model, self.optimizer, self.scaler
        model.train()
        total = torch.zeros((), device=self.device)
        for micro_batch in batch:
            with autocast(self.precision, self.device):
                loss = self.loss_fn(micro_batch)
            scaled = loss / len(batch)
            (scaled if scaler is None else scaler.scale(scaled)).backward()
            total += loss.detach().float()
        if self.before_update is not None:
            self.before_update()
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return total / len(batch)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[MicroBatch], torch.Tensor],
    precision: str,
    device: torch.device,
    grad_clip: float,
) -> tuple[TrainStep, dict[str, Any]]:
    """One optimizer step over all micro-batches of ``batch``, and the state to checkpoint.

    Each micro-batch loss is divided by the number of micro-batches so the accumulated
    gradient is the mean over the whole step. The step returns the mean loss as a device
    tensor so it does not force a host sync; the harness synchronises.
    """
    train_step = TrainStep(model, optimizer, loss_fn, precision, device, grad_clip)
    extra_state: dict[str, Any] = {} if train_step.scaler is None else {"scaler": train_step.scaler}
    return train_step, extra_state


def assemble(
    name: str,
    config: WorkloadConfig,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    grad_clip: float,
    loss_fn: Callable[[Any], torch.Tensor],
    next_batch: Callable[[], Any],
    tokens_per_sample: int,
    token_unit: str,
    training_flops_per_sample: int,
    rngs: Mapping[str, torch.Generator] | None = None,
    eval_loss: Callable[[Any], torch.Tensor] | None = None,
    eval_batch: Callable[[int], Any] | None = None,
) -> Workload:
    """Wire a built model into a Workload: optimizer, train step and per-step counts.

    ``rngs`` are the workload's stream generators; they join ``extra_state`` so that a
    checkpoint restores where the data and noise streams were, and a resumed run draws
    exactly what an uninterrupted one would have. ``eval_loss`` (a micro-batch's loss, run
    under no_grad in eval mode) and ``eval_batch`` (held-out batch i) make it evaluable.
    """
    device = torch.device(config.device)
    optimizer = adamw(model, lr, weight_decay, device)
    train_step, extra_state = make_train_step(
        model, optimizer, loss_fn, config.precision, device, grad_clip
    )
    for key, generator in (rngs or {}).items():
        if key in extra_state:
            raise ValueError(f"rng name {key!r} is taken by the train step's extra state")
        extra_state[key] = generator
    samples = config.micro_batch * config.grad_accum
    counts = StepCounts(
        params=trainable_params(model),
        samples_per_step=samples,
        tokens_per_sample=tokens_per_sample,
        token_unit=token_unit,
        flops_per_step=float(training_flops_per_sample * samples),
    )
    return Workload(
        name=name,
        counts=counts,
        model=model,
        optimizer=optimizer,
        next_batch=next_batch,
        train_step=train_step,
        extra_state=extra_state,
        eval_step=(
            None
            if eval_loss is None
            else make_eval_step(model, eval_loss, config.precision, device)
        ),
        eval_batch=eval_batch,
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention through SDPA, so CUDA gets flash / memory-efficient kernels."""

    def __init__(self, dim: int, num_heads: int, causal: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        qkv = self.qkv(x).view(batch, seq, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, seq, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")  # GPT-2's and DiT's GELU
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
