"""The contract between the calibration harness / training entry and a workload.

This module must stay importable without torch: the login node validates specs against it.
A user's workload is a function ``module:function(config: WorkloadConfig) -> Workload``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class WorkloadConfig:
    """What the harness asks a workload builder for: one device's share of one optimizer step."""

    preset: str
    overrides: Mapping[str, Any]
    micro_batch: int  # samples per forward/backward on one device
    grad_accum: int  # micro-batches per optimizer step
    precision: str  # one of PRECISIONS
    device: str  # "cpu", "cuda", "cuda:1", ...
    seed: int = 0


@dataclass(frozen=True)
class StepCounts:
    """Per-optimizer-step counts on one device, in explicit units.

    ``tokens_per_sample`` counts what ``token_unit`` says (e.g. sequence positions the
    transformer processes); the planner converts a data size in tokens to samples with it.
    """

    params: int
    samples_per_step: int
    tokens_per_sample: int
    token_unit: str
    flops_per_step: float  # analytic training FLOPs (forward + backward), whole optimizer step

    @property
    def tokens_per_step(self) -> int:
        return self.samples_per_step * self.tokens_per_sample

    @property
    def flops_per_sample(self) -> float:
        return self.flops_per_step / self.samples_per_step


@dataclass
class Workload:
    """A built workload, ready to step. Not frozen: it owns a live model and optimizer.

    ``next_batch()`` produces the data for one optimizer step (all micro-batches), already on
    the device; the harness times it separately as the data-loading share.
    ``train_step(batch)`` runs forward/backward over the micro-batches and one optimizer
    step, and returns the loss (a tensor or float; the harness synchronises the device).

    Evaluation is optional; a workload offers it with both of these, or neither:
    ``eval_batch(index)`` returns held-out batch ``index`` (one micro-batch, on the device),
    the same data for the same index every time, from generators of its own: drawing it must
    not advance the training's streams, or evaluating would change the run it measures.
    ``eval_step(batch)`` returns its loss from a forward pass only (no gradients, no update,
    the model in eval mode). An evaluation of N batches is ``eval_step(eval_batch(i))`` for
    i in 0..N-1 (data-parallel rank r takes r*N..r*N+N-1), timed together, data included.
    """

    name: str
    counts: StepCounts
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    next_batch: Callable[[], Any]
    train_step: Callable[[Any], Any]
    extra_state: dict[str, Any] = field(default_factory=dict)  # e.g. a GradScaler, saved too
    eval_step: Callable[[Any], Any] | None = None
    eval_batch: Callable[[int], Any] | None = None

    def __post_init__(self) -> None:
        if (self.eval_step is None) != (self.eval_batch is None):
            raise ValueError(
                "Workload.eval_step and Workload.eval_batch go together: give both, or "
                "neither for a workload without evaluation"
            )

    @property
    def can_evaluate(self) -> bool:
        return self.eval_step is not None


Builder = Callable[[WorkloadConfig], Workload]
