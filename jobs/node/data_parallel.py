"""Making a workload one rank of a data-parallel run, the same way for the calibration and
the training: every rank builds the workload; rank 0's initial weights are broadcast; every
rank but 0 re-seeds its RNG streams, so the ranks draw different samples and one optimizer
step sees ``ranks x micro_batch x grad_accum`` of them; gradients are averaged once per step.

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

from jobs.contract.failure import CollectiveFailed
from jobs.node.group import Group


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s copy of a stream seeded ``seed``. Rank 0 keeps ``seed``, so
    its draws are a one-process run's; the others get hashed seeds, unrelated to ``seed + k``
    (the next stream of the same workload) and to each other."""
    if rank == 0:
        return seed
    digest = hashlib.blake2b(f"plan-job/{seed}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # torch takes seeds below 2**64


def decorrelate_streams(workload: Any, rank: int) -> None:
    """Re-seed this rank's data/noise generators and torch's global RNGs: built from the same
    seed, every rank would draw the same samples and the global batch would be one rank's
    batch repeated. Workloads stay unaware of ranks: their generators are the
    ``torch.Generator`` objects in ``extra_state``, which checkpoints already track."""
    import torch

    if rank == 0:
        return
    for obj in workload.extra_state.values():
        if isinstance(obj, torch.Generator):
            obj.manual_seed(rank_seed(obj.initial_seed(), rank))
    torch.manual_seed(rank_seed(torch.initial_seed(), rank))  # the CPU's and every GPU's


def join_data_parallel(workload: Any, group: Group, program: str) -> None:
    """Make ``workload`` one rank of a data-parallel run, the same way for the calibration and
    the training (``program`` names which in the note): its own data streams, rank 0's
    weights, gradients averaged once per optimizer step (DDP's no_sync() semantics)."""
    decorrelate_streams(workload, group.world.rank)
    group.broadcast_weights(workload.model)
    hooked = install_gradient_averaging(workload, group)
    if hooked == "optimizer" and group.is_main:
        print(
            f"{program}: note: the workload has its own train_step: gradients are "
            "averaged across ranks in optimizer.step(), after any clipping or loss scaling "
            "that train_step does (which then sees one rank's gradients)",
            file=sys.stderr,
        )


def install_gradient_averaging(workload: Any, group: Group) -> str:
    """Average gradients across the ranks once per optimizer step; returns where it hooked.

    The built-in train step (jobs.workloads.common.TrainStep) calls ``before_update`` after
    its last micro-batch's backward, before unscaling, clipping and the update: the same
    gradients as DDP under ``no_sync()`` for all but the last micro-batch, with one exchange
    per step. Clipping then sees the global gradient, and with fp16 an inf on any rank
    reaches every rank, so all skip the step together. A workload's own train step is hooked
    in ``optimizer.step()`` instead (a step pre-hook): exact unless that step clips gradients
    itself (it would clip this rank's share); one that scales the loss is refused.
    """
    from torch.amp import GradScaler

    from jobs.workloads.common import TrainStep

    seen: set[int] = set()
    params = []
    for param_group in workload.optimizer.param_groups:
        for param in param_group["params"]:
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                params.append(param)

    def average() -> None:
        group.average_gradients(params)

    if isinstance(workload.train_step, TrainStep):
        workload.train_step.before_update = average
        return "train_step"
    if any(isinstance(obj, GradScaler) for obj in workload.extra_state.values()):
        # Each rank's scaler would find infs in its own gradients: ranks skipping different
        # steps would then wait in different collectives.
        raise CollectiveFailed(
            "the workload's own train_step scales the loss (a GradScaler): that cannot be "
            "made data-parallel from outside; build its step with "
            "jobs.workloads.common.make_train_step (or assemble), or train on one rank"
        )
    workload.optimizer.register_step_pre_hook(lambda _optimizer, _args, _kwargs: average())
    return "optimizer"
