"""Weighing node counts: each one's step time, checkpoint interval, segments and wall time
(a Candidate), the choice among them, and the row each gets in the plan's node table.

Choice: with a deadline, the fewest GPU-hours whose P95 wall time meets it; without one, the
fastest (P50) node count whose scaling efficiency is at least plan.efficiency_floor.

Stop margin: every segment's --time reserves lead_s = P95 step + one checkpoint save +
SIGNAL_MARGIN_S + 60 s after its planned work. The signal is asked for 60 s later than that
(--signal=B:USR2@(lead_s - 60)) because Slurm may deliver it up to 60 s early: its earliest
arrival is then the end of the planned work, and its latest still leaves a step and a save.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from planner.calibration.record import CalibrationRecord
from planner.errors import DeadlineError, SpecError
from planner.model.correction import Correction
from planner.model.interval import choose_interval
from planner.model.plan import (
    SIGNAL_MARGIN_S,
    SIGNAL_SLACK_S,
    CheckpointChoice,
    NodeOption,
    TimeEstimate,
)
from planner.model.plan_limits import corrected_step
from planner.model.timemodel import (
    StepStats,
    StretchTime,
    Totals,
    estimate_time,
    first_overhead_s,
    resume_s,
    segment_count,
    step_stats,
)
from planner.scaling.ring import ScalingModel, StepTime, efficiency, step_at
from planner.slurm.partition import PartitionLimits
from planner.spec.run_spec import RunSpec
from planner.units import fmt_duration, fmt_percent


@dataclass(frozen=True)
class Candidate:
    nodes: int
    grad_accum: int
    step: StepTime
    stats: StepStats
    work: StretchTime
    checkpoint: CheckpointChoice
    lead_s: int
    segments: int
    wall: TimeEstimate
    efficiency: float
    gpu_hours: float
    correction: Correction | None = None  # the history's, at this node count
    spread: float = 0.0  # the run-to-run spread its P95 used


def evaluate(
    spec: RunSpec,
    record: CalibrationRecord,
    totals: Totals,
    model: ScalingModel,
    partition: PartitionLimits | None,
    n: int,
    one_node_s: float,
    eval_s: float,
    spread: float,
    correction: Correction | None,
) -> Candidate:
    m = record.measurement
    accum, step = step_at(spec, model, n)
    step = corrected_step(step, correction)
    if correction is not None:
        spread = max(spread, correction.spread)
    stats = step_stats(spec, m, step.total_s, spread)
    gpus = n * gpus_per_node(spec)
    resume = resume_s(m)
    checkpoint = choose_interval(spec, m.checkpoint_save_s, resume, stats.mean_s, gpus)
    plan = spec.plan
    work = StretchTime(
        stats, m.checkpoint_save_s, checkpoint.interval_steps, eval_s, plan.eval_interval_steps
    )
    lead = math.ceil(stats.p95_s + m.checkpoint_save_s + SIGNAL_MARGIN_S + SIGNAL_SLACK_S)
    first = first_overhead_s(m)
    max_time = partition.max_time_s if partition else None
    count = segment_count(
        work, totals.steps, first, resume, lead, max_time, partition_name(partition)
    )
    wall = estimate_time(spec, m, totals, stats, checkpoint, count, resume, eval_s)
    failures = (wall.p50_s - wall.failures_s) / checkpoint.mtbf_s
    checkpoint = dataclasses.replace(checkpoint, expected_failures=failures)
    return Candidate(
        nodes=n,
        grad_accum=accum,
        step=step,
        stats=stats,
        work=work,
        checkpoint=checkpoint,
        lead_s=lead,
        segments=count,
        wall=wall,
        efficiency=efficiency(one_node_s, n, step.total_s),
        gpu_hours=wall.p50_s * gpus / 3600,
        correction=correction,
        spread=spread,
    )


def choose(
    spec: RunSpec,
    results: list[Candidate | SpecError],
    deadline_hours: float | None,
    forced: int | None,
) -> tuple[Candidate, str]:
    feasible = [r for r in results if isinstance(r, Candidate)]
    if not feasible:
        raise next(r for r in results if isinstance(r, SpecError))
    candidates = feasible
    if forced is not None:
        picked = results[forced - 1]
        if isinstance(picked, SpecError):
            raise picked
        candidates = [picked]
    if deadline_hours is not None:
        meeting = [c for c in candidates if c.wall.p95_s <= deadline_hours * 3600]
        if not meeting:
            best = min(feasible, key=lambda c: c.wall.p95_s)
            tried = f"{forced} node(s)" if forced else f"any of 1..{len(results)} node(s)"
            if len(feasible) < len(results) and not forced:
                tried += f" (possible: {_counts(feasible)})"
            raise DeadlineError(
                "plan.deadline_hours",
                deadline_hours,
                f"not met at P95 on {tried}; the best achievable is "
                f"{fmt_duration(best.wall.p95_s)} ({best.wall.p95_s / 3600:.3g} h) at P95 on "
                f"{best.nodes} node(s): raise the deadline, plan.max_nodes or use a larger "
                "partition",
                spec.source,
            )
        chosen = min(meeting, key=lambda c: (c.gpu_hours, c.wall.p95_s))
        why = f"fewest GPU-hours with P95 within the {deadline_hours:g} h deadline"
    else:
        floor = spec.plan.efficiency_floor
        efficient = [c for c in candidates if c.efficiency >= floor - 1e-12] or candidates
        chosen = min(efficient, key=lambda c: (c.wall.p50_s, c.nodes))
        why = f"fastest (P50) with scaling efficiency >= {fmt_percent(floor)}, no deadline"
    return chosen, (f"--nodes {forced}" if forced is not None else why)


def node_option(
    spec: RunSpec,
    result: Candidate | SpecError,
    n: int,
    chosen: Candidate,
    why: str,
    deadline_hours: float | None,
) -> NodeOption:
    gpus = n * gpus_per_node(spec)
    if isinstance(result, SpecError):
        return NodeOption(n, gpus, False, result.allowed)
    c = result
    if c is chosen:
        reason = f"chosen: {why}"
    elif deadline_hours is not None and c.wall.p95_s > deadline_hours * 3600:
        reason = f"P95 over the {deadline_hours:g} h deadline"
    elif deadline_hours is not None:
        reason = "more GPU-hours"
    elif c.efficiency < spec.plan.efficiency_floor - 1e-12:
        reason = f"efficiency below {fmt_percent(spec.plan.efficiency_floor)}"
    else:
        reason = "slower" if c.wall.p50_s >= chosen.wall.p50_s else "not chosen"
    cost = spec.plan.gpu_hour_cost
    return NodeOption(
        nodes=n,
        gpus=gpus,
        feasible=True,
        reason=reason,
        chosen=c is chosen,
        grad_accum=c.grad_accum,
        step_s=c.stats.mean_s,
        comm_s=c.step.comm_s,
        efficiency=c.efficiency,
        wall_p50_s=c.wall.p50_s,
        wall_p95_s=c.wall.p95_s,
        segments=c.segments,
        gpu_hours=c.gpu_hours,
        cost=None if cost is None else c.gpu_hours * cost,
    )


def _counts(candidates: list[Candidate]) -> str:
    counts = [str(c.nodes) for c in candidates]
    return ", ".join(counts[:8]) + (", ..." if len(counts) > 8 else "")


def gpus_per_node(spec: RunSpec) -> int:
    return max(spec.cluster.gpus_per_node, 1)


def partition_name(partition: PartitionLimits | None) -> str:
    return f"partition {partition.name}" if partition else "the partition"
