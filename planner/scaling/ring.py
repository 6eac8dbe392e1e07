"""How the optimizer step time changes with the node count: a model behind a small Protocol.

A one-device calibration times ONE device, so every number here is extrapolated from it; a
multi-node calibration fits a model from its jobs (planner.scaling.fit.MeasuredScaling), which
drops in through ``ScalingModel``.

The default, ``RingAllReduce`` (data parallel, DDP):

    t_micro   = calibrated step_mean / calibrated grad_accum     (one micro-batch, one GPU)
    accum(n)  = global_batch / (micro_batch x G x n)            (must be a whole number >= 1)
    compute   = accum(n) x t_micro
    intra     = 2 (G-1)/G x bytes / intranode_bw                 (when G > 1)
    inter     = 2 (n-1)/n x bytes / interconnect_bw + latency    (when n > 1)
    step(n)   = compute + intra + inter

bytes = params x 4: DDP all-reduces gradients in the parameters' dtype, and the workloads keep
fp32 master parameters under bf16/fp16 autocast, so 4 bytes per parameter whatever the
precision. The all-reduce runs once per optimizer step (DDP's no_sync over the accumulation
micro-batches). Hierarchical ring: a reduce-scatter/all-gather over NVLink inside the node,
and across nodes each GPU carries 1/G of the bytes over its own NIC, hence the per-node
aggregate bandwidth. No overlap of communication with the backward pass is assumed: this
overestimates the step, so the plan errs towards fewer nodes.

Efficiency(n) = throughput(n) / (n x throughput(1)) = step(1) / (n x step(n)); one node of G
GPUs already pays the intra-node all-reduce, so efficiency(1) = 1 by definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from planner.errors import BatchSplitError
from planner.spec.run_spec import PlanSpec, RunSpec

GRAD_BYTES_PER_PARAM = 4
_GB = 1e9


@dataclass(frozen=True)
class StepTime:
    compute_s: float
    intranode_s: float
    internode_s: float

    @property
    def comm_s(self) -> float:
        return self.intranode_s + self.internode_s

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s


class ScalingModel(Protocol):
    def step_time(self, nodes: int, gpus_per_node: int, grad_accum: int) -> StepTime:
        """One optimizer step on ``nodes`` x ``gpus_per_node`` GPUs at ``grad_accum``."""
        ...


@dataclass(frozen=True)
class RingAllReduce:
    micro_s: float  # one micro-batch's forward, backward and optimizer share on one GPU
    grad_bytes: float
    intranode_bytes_per_s: float
    interconnect_bytes_per_s: float
    latency_s: float

    def step_time(self, nodes: int, gpus_per_node: int, grad_accum: int) -> StepTime:
        gpus = max(gpus_per_node, 1)
        intra = 0.0
        if gpus > 1:
            intra = 2 * (gpus - 1) / gpus * self.grad_bytes / self.intranode_bytes_per_s
        inter = 0.0
        if nodes > 1:
            inter = 2 * (nodes - 1) / nodes * self.grad_bytes / self.interconnect_bytes_per_s
            inter += self.latency_s
        return StepTime(grad_accum * self.micro_s, intra, inter)


def ring_model(
    plan: PlanSpec, step_mean_s: float, calibrated_accum: int, params: int
) -> RingAllReduce:
    return RingAllReduce(
        micro_s=step_mean_s / calibrated_accum,
        grad_bytes=float(params * GRAD_BYTES_PER_PARAM),
        intranode_bytes_per_s=plan.intranode_gbps * _GB,
        interconnect_bytes_per_s=plan.interconnect_gbps * _GB,
        latency_s=plan.allreduce_latency_s,
    )


def grad_accum_for(global_batch: int, micro_batch: int, gpus: int) -> int | None:
    """Micro-batches per GPU per optimizer step, or None when the batch does not split."""
    per_pass = micro_batch * max(gpus, 1)
    if global_batch % per_pass:
        return None
    return global_batch // per_pass


def efficiency(step_one_node_s: float, nodes: int, step_s: float) -> float:
    return step_one_node_s / (nodes * step_s)


def step_at(spec: RunSpec, model: ScalingModel, n: int) -> tuple[int, StepTime]:
    """(grad_accum, step time) at n nodes; BatchSplitError when the batch does not split."""
    batch, per_node = spec.batch, max(spec.cluster.gpus_per_node, 1)
    accum = grad_accum_for(batch.global_batch, batch.micro_batch, n * per_node)
    if accum is None:
        per_pass = batch.micro_batch * n * per_node
        raise BatchSplitError(
            "batch.global_batch",
            batch.global_batch,
            f"at {n} node(s) it must be a multiple of micro_batch x GPUs = "
            f"{batch.micro_batch} x {n * per_node} = {per_pass}",
            spec.source,
        )
    return accum, model.step_time(n, spec.cluster.gpus_per_node, accum)
