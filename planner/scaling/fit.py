"""The scaling model fitted to calibrations at several node counts. Torch-free.

A multi-node calibration (``calibration.nodes: [1, 2]``) runs the real training step
data-parallel at every node count and times all-reduces of fp32 buffers across all ranks at
the gradient's size and at 1/4 and 1/16 of it. The plan's fit is of the ring all-reduce

    t(bytes, r) = latency + 2 (r-1)/r x bytes / bytes_per_s          (r = ranks)

to the communication each multi-node step shows: its step less grad_accum x the smallest
count's per-micro-batch compute, at bytes = the gradient's. That is what a run pays: DDP's
overlap of the all-reduce with the backward pass, and whatever else the nodes cost each other
(on the test cluster two "nodes" share two cores), are in it; an all-reduce timed on its own
sees neither. The same form is also fitted to the timed all-reduces (every size, every
multi-node count) and kept beside it (``allreduce_fit``), so a gap between the fabric and the
steps is on record. Both fits are least squares on the relative error, parameters >= 0;
bytes_per_s is what nccl-tests calls the bus bandwidth, the figure plan.interconnect_gbps asks
for. With a single point (one multi-node count for the steps) latency stays
plan.allreduce_latency_s and only the bandwidth is fitted.

``MeasuredScaling`` keeps RingAllReduce's shape (grad_accum micro-batches, then one all-reduce
per optimizer step; the intra-node term from plan.intranode_gbps) with the fitted all-reduce
across nodes. The fitted t(r) is the whole all-reduce across the r = n x G ranks, intra-node
share included, so across nodes the model charges t(n x G) minus the intra-node term it
already counts: then the model's step at a measured count equals 1-node compute + the fitted
all-reduce, and with one rank per node it is exactly RingAllReduce with the fitted numbers.
The per-micro-batch compute comes from the smallest measured count's step less its modelled
communication, so the model reproduces that measurement exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from planner.scaling.ring import GRAD_BYTES_PER_PARAM, StepTime
from planner.spec.run_spec import PlanSpec
from planner.units import fmt_duration

_GB = 1e9


@dataclass(frozen=True)
class ScalingPoint:
    """One calibration job of a multi-node calibration, as rank 0 measured it."""

    nodes: int
    ranks: int
    tasks_per_node: int
    backend: str  # torch.distributed's: nccl, gloo; '' for one rank
    grad_accum: int  # micro-batches per rank per optimizer step at this count
    step_mean_s: float  # one optimizer step, all-reduce included
    step_ci_half_s: float
    # (bytes, median seconds) of one all-reduce of that many fp32 bytes across all ranks
    allreduce_times: tuple[tuple[int, float], ...] = ()
    job_id: str = ""


@dataclass(frozen=True)
class AllReduceFit:
    latency_s: float
    bytes_per_s: float  # bus bandwidth; inf when the times did not grow with the bytes
    points: int  # (bytes, seconds) pairs the fit used
    latency_fitted: bool  # False: one point, latency from plan.allreduce_latency_s
    rms_relative_error: float  # of the fitted all-reduce times against the measured ones
    max_relative_error: float


@dataclass(frozen=True)
class StepCheck:
    """A measured node count's step against the fitted model's."""

    nodes: int
    measured_s: float
    model_s: float

    @property
    def error(self) -> float:
        return (self.model_s - self.measured_s) / self.measured_s


@dataclass(frozen=True)
class ScalingSection:
    """The record's ``scaling`` section: every node count's job and what was fitted."""

    points: tuple[ScalingPoint, ...]  # by node count; the first is the record's measurement
    # What the plan uses: latency and bandwidth fitted to the communication each measured
    # multi-node step shows (its step less grad_accum x the smallest count's micro-batch):
    # what a run pays, with DDP's overlap and whatever else the nodes cost each other. None:
    # no multi-node count was measured.
    fit: AllReduceFit | None
    checks: tuple[StepCheck, ...]  # at calibration time, with the record's plan settings
    # The same form fitted to the all-reduces timed on their own: the fabric alone, beside the
    # plan's fit so that a gap between them is on record (None: none timed across nodes).
    allreduce_fit: AllReduceFit | None = None

    @property
    def node_counts(self) -> tuple[int, ...]:
        return tuple(p.nodes for p in self.points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [
                {
                    "nodes": p.nodes,
                    "ranks": p.ranks,
                    "tasks_per_node": p.tasks_per_node,
                    "backend": p.backend,
                    "grad_accum": p.grad_accum,
                    "step_mean_s": p.step_mean_s,
                    "step_ci_half_s": p.step_ci_half_s,
                    "allreduce_times": [[int(b), float(t)] for b, t in p.allreduce_times],
                    "job_id": p.job_id,
                }
                for p in self.points
            ],
            "fit": None if self.fit is None else _fields(self.fit),
            "allreduce_fit": None if self.allreduce_fit is None else _fields(self.allreduce_fit),
            "checks": [
                {"nodes": c.nodes, "measured_s": c.measured_s, "model_s": c.model_s}
                for c in self.checks
            ],
        }


def section_from_dict(raw: Mapping[str, Any]) -> ScalingSection:
    """Inverse of ScalingSection.to_dict; YAML's lists become the dataclasses' tuples.
    Raises KeyError or TypeError on missing or unknown fields (load_record reports them)."""
    points = []
    for item in raw["points"]:
        values = dict(item)
        values["allreduce_times"] = tuple(
            (int(b), float(t)) for b, t in values.get("allreduce_times") or ()
        )
        points.append(ScalingPoint(**values))
    fit = raw.get("fit")
    timed = raw.get("allreduce_fit")
    checks = tuple(StepCheck(**c) for c in raw.get("checks") or ())
    return ScalingSection(
        tuple(points),
        AllReduceFit(**fit) if fit else None,
        checks,
        AllReduceFit(**timed) if timed else None,
    )


def fit_allreduce(points: Sequence[ScalingPoint], default_latency_s: float) -> AllReduceFit | None:
    """latency_s and bytes_per_s of t = latency + 2(r-1)/r x bytes / bytes_per_s from the
    all-reduces timed at every multi-node count; None when there are none."""
    samples = [
        (2 * (p.ranks - 1) / p.ranks * b, t)
        for p in points
        if p.nodes > 1 and p.ranks > 1
        for b, t in p.allreduce_times
        if b > 0 and t > 0
    ]
    return _least_squares(samples, default_latency_s)


def fit_steps(points: Sequence[ScalingPoint], plan: PlanSpec, params: int) -> AllReduceFit | None:
    """latency_s and bytes_per_s of the same form, fitted to the communication each measured
    multi-node step shows: its step less grad_accum x the smallest count's micro-batch
    compute (that count's step less the spec's intra-node term). In the model a step is
    compute + max(all-reduce, intra-node), so that remainder is the all-reduce across all
    ranks. One multi-node count fits the bandwidth only."""
    base = points[0]
    grad_bytes = float(params * GRAD_BYTES_PER_PARAM)
    flat = MeasuredScaling(0.0, grad_bytes, plan.intranode_gbps * _GB, 0.0, math.inf)
    micro_s = max(base.step_mean_s - flat.intranode_s(base.tasks_per_node), 0.0) / base.grad_accum
    samples = [
        # Nothing left over: the point says communication is hidden entirely.
        (
            2 * (p.ranks - 1) / p.ranks * grad_bytes,
            max(p.step_mean_s - p.grad_accum * micro_s, 1e-9),
        )
        for p in points
        if p.nodes > 1 and p.ranks > 1 and grad_bytes > 0
    ]
    return _least_squares(samples, plan.allreduce_latency_s)


def _least_squares(
    samples: Sequence[tuple[float, float]], default_latency_s: float
) -> AllReduceFit | None:
    if not samples:
        return None
    # Minimise sum((latency + beta x - t) / t)^2, beta = 1 / bytes_per_s: ordinary least
    # squares in a = 1/t, b = x/t against 1.
    saa = sum(1 / t**2 for _, t in samples)
    sab = sum(x / t**2 for x, t in samples)
    sbb = sum(x**2 / t**2 for x, t in samples)
    sa = sum(1 / t for _, t in samples)
    sb = sum(x / t for x, t in samples)
    det = saa * sbb - sab**2
    fitted = len({x for x, _ in samples}) > 1 and det > 1e-12 * saa * sbb
    if fitted:
        latency = (sa * sbb - sb * sab) / det
        beta = (saa * sb - sab * sa) / det
        if latency < 0:
            latency, beta = 0.0, sb / sbb
        elif beta < 0:
            latency, beta = sa / saa, 0.0
    else:
        latency = default_latency_s
        beta = max((sb - latency * sab) / sbb, 0.0)
    errors = [(latency + beta * x - t) / t for x, t in samples]
    return AllReduceFit(
        latency_s=latency,
        bytes_per_s=1 / beta if beta > 0 else math.inf,
        points=len(samples),
        latency_fitted=fitted,
        rms_relative_error=math.sqrt(sum(e * e for e in errors) / len(errors)),
        max_relative_error=max(abs(e) for e in errors),
    )


@dataclass(frozen=True)
class MeasuredScaling:
    """ScalingModel from a multi-node calibration (see the module docstring)."""

    micro_s: float  # one micro-batch's compute on one rank, communication taken out
    grad_bytes: float
    intranode_bytes_per_s: float  # plan.intranode_gbps
    latency_s: float  # fitted, else plan.allreduce_latency_s
    bytes_per_s: float  # fitted bus bandwidth, else plan.interconnect_gbps

    def allreduce_s(self, ranks: int) -> float:
        """The fitted all-reduce of the gradient across ``ranks`` ranks."""
        if ranks <= 1:
            return 0.0
        return self.latency_s + 2 * (ranks - 1) / ranks * self.grad_bytes / self.bytes_per_s

    def intranode_s(self, gpus_per_node: int) -> float:
        gpus = max(gpus_per_node, 1)
        if gpus == 1:
            return 0.0
        return 2 * (gpus - 1) / gpus * self.grad_bytes / self.intranode_bytes_per_s

    def step_time(self, nodes: int, gpus_per_node: int, grad_accum: int) -> StepTime:
        intra = self.intranode_s(gpus_per_node)
        inter = 0.0
        if nodes > 1:
            inter = max(self.allreduce_s(nodes * max(gpus_per_node, 1)) - intra, 0.0)
        return StepTime(grad_accum * self.micro_s, intra, inter)


def measured_scaling(
    plan: PlanSpec, section: ScalingSection, base_step_s: float, params: int
) -> MeasuredScaling:
    """The model from a record's scaling section; ``base_step_s`` is the smallest count's step
    (the record's measurement, so that a history correction of it carries over)."""
    fit = section.fit
    model = MeasuredScaling(
        micro_s=0.0,
        grad_bytes=float(params * GRAD_BYTES_PER_PARAM),
        intranode_bytes_per_s=plan.intranode_gbps * _GB,
        latency_s=fit.latency_s if fit else plan.allreduce_latency_s,
        bytes_per_s=fit.bytes_per_s if fit else plan.interconnect_gbps * _GB,
    )
    base = section.points[0]
    comm = model.step_time(base.nodes, base.tasks_per_node, 0).comm_s
    # A spec whose intra-node bandwidth is too pessimistic could model more communication
    # than the whole measured step: the compute cannot be negative.
    micro_s = max(base_step_s - comm, 0.0) / base.grad_accum
    return MeasuredScaling(
        micro_s,
        model.grad_bytes,
        model.intranode_bytes_per_s,
        model.latency_s,
        model.bytes_per_s,
    )


def step_checks(model: MeasuredScaling, points: Sequence[ScalingPoint]) -> tuple[StepCheck, ...]:
    """Each measured count's step against the model's at the same shape and accumulation."""
    return tuple(
        StepCheck(
            p.nodes, p.step_mean_s, model.step_time(p.nodes, p.tasks_per_node, p.grad_accum).total_s
        )
        for p in points
    )


def make_section(points: Sequence[ScalingPoint], plan: PlanSpec, params: int) -> ScalingSection:
    ordered = tuple(sorted(points, key=lambda p: p.nodes))
    fit = fit_steps(ordered, plan, params)
    timed = fit_allreduce(ordered, plan.allreduce_latency_s)
    section = ScalingSection(ordered, fit, (), timed)
    model = measured_scaling(plan, section, ordered[0].step_mean_s, params)
    return ScalingSection(ordered, fit, step_checks(model, ordered), timed)


def measured_efficiency(
    section: ScalingSection, nodes: int, gpus_per_node: int, base_efficiency: float = 1.0
) -> float | None:
    """Throughput per node at ``nodes`` over the smallest measured count's, from the jobs
    themselves (times ``base_efficiency``, the model's at that count when it is not 1 node);
    None when ``nodes`` was not measured or ran another number of ranks per node."""
    base = section.points[0]
    point = next((p for p in section.points if p.nodes == nodes), None)
    if point is None or point.tasks_per_node != max(gpus_per_node, 1):
        return None
    per_node = point.ranks * point.grad_accum / point.step_mean_s / point.nodes
    base_per_node = base.ranks * base.grad_accum / base.step_mean_s / base.nodes
    return base_efficiency * per_node / base_per_node


def describe_fit(section: ScalingSection) -> str:
    """One line: what the plan's all-reduce across nodes comes from."""
    fit = section.fit
    if fit is None:
        return (
            "no node count above one was measured: plan.interconnect_gbps and "
            "plan.allreduce_latency_s"
        )
    gbps = "unbounded" if math.isinf(fit.bytes_per_s) else f"{fit.bytes_per_s / _GB:.3g} GB/s"
    latency = f"latency {fit.latency_s * 1e3:.3g} ms"
    if not fit.latency_fitted:
        latency += " (plan.allreduce_latency_s: one point fits the bandwidth only)"
    multi = [str(p.nodes) for p in section.points if p.nodes > 1]
    text = (
        f"all-reduce fitted to the steps at {', '.join(multi)} nodes (step less compute): "
        f"bus bandwidth {gbps}, {latency}; residual {fit.rms_relative_error:.1%} RMS"
    )
    timed = section.allreduce_fit
    if timed is not None:
        alone = "unbounded" if math.isinf(timed.bytes_per_s) else f"{timed.bytes_per_s / _GB:.3g}"
        text += (
            f". Timed on its own ({timed.points} timings): {alone} GB/s, latency "
            f"{timed.latency_s * 1e3:.3g} ms"
        )
    return text


def extrapolation(measured: Sequence[int], nodes: int) -> str:
    """How far ``nodes`` lies beyond the node counts that were measured."""
    low, high = min(measured), max(measured)
    span = f"{low}-{high} nodes" if low != high else f"{low} node{'s' if low > 1 else ''}"
    if nodes > high:
        return f"measured at {span}; {nodes} nodes is extrapolated {nodes / high:.3g}x beyond"
    if nodes < low:
        return f"measured at {span}; {nodes} node(s) is below the measured range"
    return f"measured at {span}; {nodes} node(s) is within the measured range"


def scaling_rows(section: ScalingSection) -> list[tuple[str, str]]:
    """The calibration report's lines for a multi-node calibration."""
    rows = [("scaling model", describe_fit(section))]
    checks = {c.nodes: c for c in section.checks}
    for p in section.points:
        text = (
            f"{p.ranks} rank(s) ({p.tasks_per_node}/node, {p.backend or 'no backend'}), "
            f"grad_accum {p.grad_accum}: step {fmt_duration(p.step_mean_s)} "
            f"± {p.step_ci_half_s / p.step_mean_s:.1%}"
        )
        check = checks.get(p.nodes)
        if check is not None:
            text += f"; model {fmt_duration(check.model_s)} ({check.error:+.1%})"
        if p.job_id:
            text += f"; job {p.job_id}"
        rows.append((f"  {p.nodes} node(s)", text))
    return rows


def _fields(fit: AllReduceFit) -> dict[str, Any]:
    return {
        "latency_s": fit.latency_s,
        "bytes_per_s": fit.bytes_per_s,
        "points": fit.points,
        "latency_fitted": fit.latency_fitted,
        "rms_relative_error": fit.rms_relative_error,
        "max_relative_error": fit.max_relative_error,
    }
